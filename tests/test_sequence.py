"""Sequence building: pieces → ids and labels, media expansion, truncation, padding.

(Exactness against the upstream code, per template and tokenizer, is `test_prompts_exact.py`.)
"""

from __future__ import annotations

import pytest
import torch

from mmcore.builtins.byte_tokenizer import byte_level_tokenizer
from mmcore.builtins.templates import HoneybeeCoarseTemplate, HoneybeeTemplate, Llama2Template, VicunaV1Template
from mmcore.errors import SampleError
from mmcore.kinds import BuildContext, ComponentConfig, Piece, Turn
from mmcore.sequence import IGNORE_INDEX, SequenceBuilder, collate

TOK = byte_level_tokenizer()
CONVERSATION = [Turn("user", "<image>\nWhat colour?"), Turn("assistant", "Red."),
                Turn("user", "And the shape?"), Turn("assistant", "A circle.")]


def _builder(tokens: int = 4, max_length: int = 512) -> SequenceBuilder:
    return SequenceBuilder(TOK, {"image": tokens}, max_length)


def _tpl(cls: type) -> object:
    return cls(ComponentConfig(), BuildContext(name="t", tokenizer=TOK))


def _learned(pieces: list[Piece], images: int = 1) -> str:
    encoded = _builder().encode(pieces, {"image": images}, "s")
    return TOK.decode([t for t in encoded.labels if t != IGNORE_INDEX])


def test_learned_spans_map_through_offsets() -> None:
    """Only the characters a piece marks as learned carry labels, whatever the token boundaries."""
    pieces = [Piece("Q: hi A: yes</s>", learn=((8, 16),), special_tokens=True)]
    assert _learned(pieces, images=0) == " yes</s>"


def test_special_tokens_are_the_tokenizers_own() -> None:
    """`special_tokens` adds what the tokenizer adds (its BOS) once per piece, never learned."""
    encoded = _builder().encode([Piece("<image>a", special_tokens=True, learn=((7, 8),))], {"image": 1}, "s")
    assert encoded.input_ids[0] == TOK.bos_token_id and encoded.labels[0] == IGNORE_INDEX
    assert encoded.input_ids.count(TOK.bos_token_id) == 1  # kept once across the placeholder


def test_bos_and_eos_pieces_insert_ids() -> None:
    """Token pieces insert the tokenizer's BOS / EOS by id; a learned EOS carries its label."""
    encoded = _builder().encode([Piece.bos(), Piece("a", learn=True), Piece.eos(learn=True)], {}, "s")
    assert encoded.input_ids[0] == TOK.bos_token_id and encoded.input_ids[-1] == TOK.eos_token_id
    assert encoded.labels[-1] == TOK.eos_token_id


def test_placeholder_expands_to_projector_tokens() -> None:
    """Each placeholder becomes exactly tokens_per_item positions, labelled IGNORE."""
    encoded = _builder(tokens=7).encode([Piece("<image> hi"), Piece("yo", learn=True)], {"image": 1}, "s")
    (modality, start, length), = encoded.media_spans
    assert (modality, length) == ("image", 7)
    assert encoded.labels[start : start + 7] == [IGNORE_INDEX] * 7


def test_placeholder_media_mismatch_is_an_error() -> None:
    """More placeholders than media items fails at data time, naming the sample."""
    with pytest.raises(SampleError, match="sample 'x7': 2 <image> placeholder"):
        _builder().encode([Piece("<image><image>"), Piece("a", learn=True)], {"image": 1}, "x7")


def test_media_is_never_cut_by_truncation() -> None:
    """A sample whose media would pass max_length is an error, not a cut span."""
    pieces = [Piece("long prefix " * 5 + "<image>"), Piece("answer", learn=True)]
    with pytest.raises(SampleError, match="media ends at token"):
        _builder(tokens=8, max_length=40).encode(pieces, {"image": 1}, "s")


def test_truncation_keeps_media_and_cuts_text() -> None:
    """Text after the media is truncated to max_length; the media span is intact."""
    encoded = _builder(tokens=8, max_length=20).encode([Piece("<image>"), Piece("x" * 50, learn=True)],
                                                        {"image": 1}, "s")
    assert len(encoded.input_ids) == 20 and encoded.media_spans == [("image", 0, 8)]


def test_max_reply_cuts_what_follows_the_first_question() -> None:
    """`[model] max_reply_tokens` is MiniGPT-v2's max_txt_len (minigpt_base.py tokenize_conversation): the first
    question (with its image) stays whole and what follows it — replies and later questions — is cut to N tokens;
    a prompt without a reply (generation) is never cut."""
    pieces = _tpl(Llama2Template).render(CONVERSATION, task="vqa/colour")
    full = SequenceBuilder(TOK, {"image": 4}, 512).encode(pieces, {"image": 1}, "s")
    first = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    cut = SequenceBuilder(TOK, {"image": 4}, 512, max_reply=6).encode(pieces, {"image": 1}, "s")
    assert cut.input_ids == full.input_ids[: first + 6] and cut.labels == full.labels[: first + 6]
    assert TOK.decode([t for t in cut.labels if t != IGNORE_INDEX]) == "Red.</s>"  # + the next question's first token
    long = SequenceBuilder(TOK, {"image": 4}, 512, max_reply=len(full.input_ids)).encode(pieces, {"image": 1}, "s")
    assert long.input_ids == full.input_ids
    prompt = _tpl(Llama2Template).render(CONVERSATION[:1])
    alone = SequenceBuilder(TOK, {"image": 4}, 512).encode(prompt, {"image": 1}, "s", train=False)
    assert SequenceBuilder(TOK, {"image": 4}, 512, max_reply=1).encode(prompt, {"image": 1}, "s",
                                                                         train=False).input_ids == alone.input_ids


def test_fully_masked_sample_is_an_error() -> None:
    """A training sample with no learned token left is refused (LLaVA's silent mismatch)."""
    with pytest.raises(SampleError, match="no learned token"):
        _builder(max_length=10).encode([Piece("<image> question"), Piece("answer", learn=True)], {"image": 1}, "s")


def test_media_in_reply_is_an_error() -> None:
    """A placeholder inside an assistant reply is refused."""
    with pytest.raises(SampleError, match="assistant reply"):
        _builder().encode([Piece("q"), Piece("<image>", learn=True)], {"image": 1}, "s")


def test_unknown_modality_is_an_error() -> None:
    """Media of a modality no encoder takes is refused."""
    with pytest.raises(SampleError, match="no encoder takes 'audio'"):
        _builder().encode([Piece("q"), Piece("a", learn=True)], {"audio": 1}, "s")


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_and_positions(side: str) -> None:
    """Padding fills the short row on `side`; positions count real tokens; media index follows it."""
    builder = _builder(tokens=3)
    short = builder.encode([Piece("<image>"), Piece("a", learn=True)], {"image": 1}, "short")
    long = builder.encode([Piece("<image> a longer one"), Piece("b", learn=True)], {"image": 1}, "long")
    items = [{"image": [({"encoders.vision": torch.zeros(3, 2, 2)}, {})]},
             {"image": [({"encoders.vision": torch.ones(3, 2, 2)}, {})]}]
    batch = collate(builder, [short, long], items, ["image"], side)  # type: ignore[arg-type]
    gap = len(long.input_ids) - len(short.input_ids)
    row = batch.attention_mask[0].tolist()
    assert row == ([0] * gap + [1] * len(short.input_ids) if side == "left" else [1] * len(short.input_ids) + [0] * gap)
    real = batch.position_ids[0][batch.attention_mask[0] == 1].tolist()
    assert real == list(range(len(short.input_ids)))
    first = gap if side == "left" else 0
    assert batch.media_token_index[0, first : first + 3].tolist() == [0, 1, 2]
    assert batch.media_token_index[1, 0:3].tolist() == [3, 4, 5]
    assert batch.media["image"].views["encoders.vision"].shape == (2, 3, 2, 2)
    assert batch.media["image"].sample_index.tolist() == [0, 1]


def test_vicuna_v1_learns_only_replies() -> None:
    """vicuna_v1 learns " {answer}</s>" of each assistant turn (LLaVA preprocess_v1)."""
    assert _learned(_tpl(VicunaV1Template).render(CONVERSATION)) == " Red.</s> A circle.</s>"


def test_llama2_task_tag_and_untagged_tasks() -> None:
    """llama2: the sample's task gives MiniGPT-v2's identifier; LLaVA-style data (no task) gets none."""
    tagged = _tpl(Llama2Template).render(CONVERSATION, task="vqa/colour")
    assert tagged[1].text == "[INST] <Img><image></Img> [vqa] What colour?  [/INST]"
    assert _tpl(Llama2Template).render(CONVERSATION[:2])[1].text == "[INST] <Img><image></Img> What colour?  [/INST]"
    assert _learned(tagged) == "Red.</s>A circle.</s>"


def test_honeybee_fine_and_coarse_instructions() -> None:
    """honeybee: fine-grained triples per task, coarse ones per family (Honeybee's own strings)."""
    coarse = "".join(p.text for p in _tpl(HoneybeeCoarseTemplate).render(CONVERSATION[:2], task="vqa/colour"))
    assert coarse == ("The following is a conversation between a curious human and AI assistant.\nHuman: "
                      "<image>\nHuman: Answer the question using a single word or phrase. What colour?\nAI: Red.")
    fine = "".join(p.text for p in _tpl(HoneybeeTemplate).render(CONVERSATION[:2], task="vqa/colour"))
    assert "Human: Answer the question about an object's colour with a single colour word. What colour?" in fine
    assert _learned(_tpl(HoneybeeTemplate).render(CONVERSATION[:2], task="vqa/colour")) == "Red.</s>"
