"""Real tokenizers built offline, with fixed vocabularies, for token-exactness tests.

* `llama_tokenizer(legacy)`: transformers' `LlamaTokenizer` — the class `AutoTokenizer` gives for a
  Llama / Vicuna checkpoint: a sentencepiece-style BPE with `▁` word marks (Metaspace), byte fallback
  (`<0x0A>` for a newline, as Llama's ids 3..258) and `<unk>`, `<s>`, `</s>` at ids 0, 1, 2. `legacy=True`
  puts a `▁` before the text after every special token (prepend scheme "always"), `legacy=False` only at
  the start of the text ("first") — the difference LLaVA's `preprocess_v1` corrects for.
* `byte_level_bpe()`: a GPT-2-style byte-level BPE (`Ġ` marks a leading space) that adds no BOS by itself.

No training step: the vocabulary is a fixed word list whose merges are spelled out, so the ids are the same
on every machine and every `tokenizers` version, and tests can pin them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WORDS", "byte_level_bpe", "llama_tokenizer"]

# Words of the templates and test conversations. Each gets a token with and without its word mark, built by
# left-to-right merges; other text falls back to characters (and, for Llama, to byte tokens).
WORDS = (
    "A", "chat", "between", "a", "curious", "user", "and", "an", "artificial", "intelligence", "assistant",
    "The", "gives", "helpful", "detailed", "polite", "answers", "to", "the", "user's", "questions", "USER",
    "ASSISTANT", "What", "is", "in", "image", "colour", "shape", "of", "object", "red", "blue", "circle",
    "square", "It", "Describe", "this", "How", "many", "shapes", "are", "there", "two", "one", "Yes", "No",
    "INST", "Img", "Human", "AI", "following", "conversation", "human", "Answer", "question", "using", "single",
    "word", "or", "phrase", "Where", "left", "right", "[INST]", "[/INST]", "[vqa]", "[refer]", "Sure",
)


def _merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that build `word` from its characters: w+o → wo, wo+r → wor, ..."""
    return [(word[:i], word[i]) for i in range(1, len(word))]


def _vocab_and_merges(mark: str, base: list[str], words: tuple[str, ...]) -> tuple[dict[str, int], list[Any]]:
    vocab: dict[str, int] = {}
    for token in base:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for form in [mark + word for word in words] + list(words):  # marked forms first: "▁chat" beats "ch" + "at"
        for left, right in _merges(form):
            for piece in (left, right, left + right):
                if piece not in vocab:
                    vocab[piece] = len(vocab)
            if (left, right) not in merges:
                merges.append((left, right))
    return vocab, merges


def llama_tokenizer(legacy: bool) -> Any:
    """transformers' LlamaTokenizer over a fixed vocabulary (see the module docstring)."""
    from transformers import LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>"]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]  # Llama's byte-fallback tokens, ids 3..258
    letters = ["▁", *sorted((set("".join(WORDS)) | set(".,?!:'")) - {" "})]
    vocab, merges = _vocab_and_merges("▁", specials + bytes_ + letters, WORDS)
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, legacy=legacy, add_prefix_space=True, add_bos_token=True)
    tokenizer.pad_token = tokenizer.unk_token  # LLaVA: pad = unk
    tokenizer.init_kwargs["legacy"] = legacy  # written to tokenizer_config.json, as Llama checkpoints have it
    return tokenizer


def byte_level_bpe() -> Any:
    """A byte-level BPE (GPT-2 style) with `<s>`, `</s>`, `<pad>`, `<unk>` specials and no automatic BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, merges = _vocab_and_merges("Ġ", specials + alphabet, WORDS)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
