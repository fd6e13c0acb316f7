"""An offline byte-level tokenizer for tiny models: 4 specials + 256 bytes, no merges, no files.

It is a real `transformers.PreTrainedTokenizerFast` (a `tokenizers` BPE with an empty merge list over
the GPT-2 byte alphabet), so it saves with `save_pretrained` and reloads with `AutoTokenizer`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SPECIALS", "byte_level_tokenizer"]

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3, Llama's names


def byte_level_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({char: len(SPECIALS) + i for i, char in enumerate(alphabet)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(  # adds BOS by itself, as Llama's tokenizers do
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        add_bos_token=True,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": []})
    return tokenizer
