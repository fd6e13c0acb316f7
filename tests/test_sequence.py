"""Sequence building: templates, label masks, media expansion, truncation, padding."""

from __future__ import annotations

import pytest

from mmcore.builtins.byte_tokenizer import byte_level_tokenizer
from mmcore.builtins.templates import PlainTemplate, VicunaV1Template
from mmcore.errors import SampleError
from mmcore.kinds import BuildContext, ComponentConfig, Segment, Turn
from mmcore.sequence import IGNORE_INDEX, SequenceBuilder, collate

TOK = byte_level_tokenizer()
CONVERSATION = [Turn("user", "<image>\nWhat colour?"), Turn("assistant", "Red."),
                Turn("user", "And the shape?"), Turn("assistant", "A circle.")]


def _builder(tokens: int = 4, max_length: int = 512) -> SequenceBuilder:
    return SequenceBuilder(TOK, {"image": tokens}, max_length)


def _template(cls: type) -> object:
    return cls(ComponentConfig(), BuildContext(name="t"))


def test_vicuna_v1_renders_llava_text() -> None:
    """vicuna_v1 renders exactly LLaVA's conv_vicuna_v1 (SeparatorStyle.TWO) text."""
    text = "".join(s.text for s in _template(VicunaV1Template).render(CONVERSATION))
    assert text == (VicunaV1Template.system + " USER: <image>\nWhat colour? ASSISTANT: Red.</s>"
                    "USER: And the shape? ASSISTANT: A circle.</s>")


def test_vicuna_v1_supervises_only_replies() -> None:
    """Only " {answer}</s>" of each assistant turn carries labels."""
    encoded = _builder().encode(_template(VicunaV1Template).render(CONVERSATION), {"image": 1}, "s")
    learned = TOK.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert learned == " Red.</s> A circle.</s>"


def test_plain_template_is_llava_pretraining() -> None:
    """plain: `<image>` then caption + newline; the caption and newline are the only labels."""
    conversation = [Turn("user", "<image>\nDescribe."), Turn("assistant", "a red circle")]
    segments = _template(PlainTemplate).render(conversation)
    assert "".join(s.text for s in segments) == "<image>a red circle\n"
    encoded = _builder().encode(segments, {"image": 1}, "s")
    assert TOK.decode([t for t in encoded.labels if t != IGNORE_INDEX]) == "a red circle\n"


def test_placeholder_expands_to_projector_tokens() -> None:
    """Each placeholder becomes exactly tokens_per_item positions, labelled IGNORE."""
    encoded = _builder(tokens=7).encode([Segment("<image> hi"), Segment("yo", True)], {"image": 1}, "s")
    (modality, start, length), = encoded.media_spans
    assert (modality, length) == ("image", 7)
    assert encoded.labels[start : start + 7] == [IGNORE_INDEX] * 7
    assert encoded.input_ids[0] == TOK.bos_token_id


def test_placeholder_media_mismatch_is_an_error() -> None:
    """More placeholders than media items fails at data time, naming the sample."""
    with pytest.raises(SampleError, match="sample 'x7': 2 <image> placeholder"):
        _builder().encode([Segment("<image><image>"), Segment("a", True)], {"image": 1}, "x7")


def test_media_is_never_cut_by_truncation() -> None:
    """A sample whose media would pass max_length is an error, not a cut span."""
    segments = [Segment("long prefix " * 5 + "<image>"), Segment("answer", True)]
    with pytest.raises(SampleError, match="media ends at token"):
        _builder(tokens=8, max_length=40).encode(segments, {"image": 1}, "s")


def test_truncation_keeps_media_and_cuts_text() -> None:
    """Text after the media is truncated to max_length; the media span is intact."""
    encoded = _builder(tokens=8, max_length=20).encode([Segment("<image>"), Segment("x" * 50, True)],
                                                        {"image": 1}, "s")
    assert len(encoded.input_ids) == 20 and encoded.media_spans == [("image", 1, 8)]


def test_fully_masked_sample_is_an_error() -> None:
    """A training sample with no supervised token left is refused (LLaVA's silent mismatch)."""
    with pytest.raises(SampleError, match="no supervised token"):
        _builder(max_length=10).encode([Segment("<image> question"), Segment("answer", True)], {"image": 1}, "s")


def test_media_in_reply_is_an_error() -> None:
    """A placeholder inside an assistant reply is refused."""
    with pytest.raises(SampleError, match="assistant reply"):
        _builder().encode([Segment("q"), Segment("<image>", True)], {"image": 1}, "s")


def test_unknown_modality_is_an_error() -> None:
    """Media of a modality no encoder takes is refused."""
    with pytest.raises(SampleError, match="no encoder takes 'audio'"):
        _builder().encode([Segment("q"), Segment("a", True)], {"audio": 1}, "s")


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_and_positions(side: str) -> None:
    """Padding fills the short row on `side`; positions count real tokens; media index follows it."""
    import torch

    builder = _builder(tokens=3)
    short = builder.encode([Segment("<image>"), Segment("a", True)], {"image": 1}, "short")
    long = builder.encode([Segment("<image> a longer one"), Segment("b", True)], {"image": 1}, "long")
    items = [{"image": [torch.zeros(3, 2, 2)]}, {"image": [torch.ones(3, 2, 2)]}]
    batch = collate(builder, [short, long], items, ["image"], side)  # type: ignore[arg-type]
    gap = len(long.input_ids) - len(short.input_ids)
    row = batch.attention_mask[0].tolist()
    assert row == ([0] * gap + [1] * len(short.input_ids) if side == "left" else [1] * len(short.input_ids) + [0] * gap)
    real = batch.position_ids[0][batch.attention_mask[0] == 1].tolist()
    assert real == list(range(len(short.input_ids)))
    first = gap + 1 if side == "left" else 1  # after BOS
    assert batch.media_token_index[0, first : first + 3].tolist() == [0, 1, 2]
    assert batch.media_token_index[1, 1:4].tolist() == [3, 4, 5]
    assert batch.media["image"].shape == (2, 3, 2, 2)


def _tpl(cls: type) -> object:
    return cls(ComponentConfig(), BuildContext(name="t", tokenizer=TOK))


def _learned(segments: list[Segment]) -> str:
    encoded = _builder().encode(segments, {"image": 1}, "s")
    return TOK.decode([t for t in encoded.labels if t != IGNORE_INDEX])


def test_llama2_renders_minigpt_v2() -> None:
    """llama2: MiniGPT-v2's "[INST] <Img><image></Img> [task] q  [/INST]a</s>", then "<s>[INST] q [/INST]"."""
    from mmcore.builtins.templates import Llama2Template

    segments = _tpl(Llama2Template).render(CONVERSATION, task="vqa/colour")
    assert "".join(s.text for s in segments) == (
        "[INST] <Img><image></Img> [vqa] What colour?  [/INST]Red.</s><s>[INST] And the shape? [/INST]A circle.</s>")
    assert _learned(segments) == "Red.</s>A circle.</s>"


def test_llama2_has_no_tag_for_untagged_tasks() -> None:
    """LLaVA-style data (no task) gets no task identifier."""
    from mmcore.builtins.templates import Llama2Template

    text = "".join(s.text for s in _tpl(Llama2Template).render(CONVERSATION[:2]))
    assert text.startswith("[INST] <Img><image></Img> What colour?  [/INST]")


def test_honeybee_renders_human_ai() -> None:
    """honeybee: system + task instruction, "\\nHuman: <image>\\nHuman: q\\nAI: " masked, "a</s>" learned."""
    from mmcore.builtins.templates import HoneybeeCoarseTemplate, HoneybeeTemplate

    segments = _tpl(HoneybeeCoarseTemplate).render(CONVERSATION[:2], task="vqa/colour")
    assert "".join(s.text for s in segments) == (
        "The following is a conversation between a curious human and AI assistant. Answer the question "
        "using a single word or phrase.\nHuman: <image>\nHuman: What colour?\nAI: Red.</s>")
    assert _learned(segments) == "Red.</s>"
    fine = "".join(s.text for s in _tpl(HoneybeeTemplate).render(CONVERSATION[:2], task="vqa/colour"))
    assert "assistant. Answer the question about an object's colour with a single colour word.\nHuman:" in fine
    count = "".join(s.text for s in _tpl(HoneybeeTemplate).render(CONVERSATION[:2], task="vqa/count"))
    other = "".join(s.text for s in _tpl(HoneybeeCoarseTemplate).render(CONVERSATION[:2], task="vqa/count"))
    assert count != fine and other.split("\n")[0] == segments[0].text  # coarse: one triple for all VQA
