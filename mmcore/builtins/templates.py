"""Chat templates reproduced from LLaVA's `conversation.py` (upstream-systems.md §1.5, §1.6)."""

from __future__ import annotations

import re
from typing import ClassVar

from mmcore.kinds import Segment, Template, Turn

__all__ = ["HoneybeeTemplate", "Llama2Template", "PlainTemplate", "VicunaV1Template"]


class PlainTemplate(Template):
    """LLaVA `conv_llava_plain` (pretraining): `<image>` + caption + "\\n"; only the caption is learned.

    LLaVA `preprocess_plain` replaces the user turn by the bare placeholder; here the user turn's
    placeholders are kept and its other text dropped, so the rendering is the same.
    """

    separator: ClassVar[str] = "\n"

    def _media_only(self, text: str) -> str:
        return "".join(re.findall(r"<[a-z_]+>", text))

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Segment]:
        segments = []
        for turn in conversation:
            if turn.role == "user":
                segments.append(Segment(self._media_only(turn.text)))
            elif turn.role == "assistant":
                segments.append(Segment(turn.text + self.separator, supervised=True))
        return segments

    def generation_prompt(self, conversation: list[Turn], task: str | None = None) -> list[Segment]:
        return [Segment(self._media_only(t.text)) for t in conversation if t.role == "user"]

    def stop_strings(self) -> list[str]:
        return [self.separator]


class VicunaV1Template(Template):
    """LLaVA `conv_vicuna_v1` (SeparatorStyle.TWO, sep " ", sep2 "</s>").

    Rendered: "{system} USER: {q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>"; the learned
    tokens are " {a}</s>" of every assistant turn (LLaVA `preprocess_v1` masks up to "ASSISTANT:").
    """

    system: ClassVar[str] = ("A chat between a curious user and an artificial intelligence assistant. "
                             "The assistant gives helpful, detailed, and polite answers to the user's "
                             "questions.")
    roles: ClassVar[tuple[str, str]] = ("USER", "ASSISTANT")
    sep: ClassVar[str] = " "
    sep2: ClassVar[str] = "</s>"

    def _system(self, conversation: list[Turn]) -> str:
        given = [t.text for t in conversation if t.role == "system"]
        return given[0] if given else self.system

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Segment]:
        segments = [Segment(self._system(conversation) + self.sep)]
        for turn in conversation:
            if turn.role == "user":
                segments.append(Segment(f"{self.roles[0]}: {turn.text}{self.sep}{self.roles[1]}:"))
            elif turn.role == "assistant":
                segments.append(Segment(f" {turn.text}{self.sep2}", supervised=True))
        return segments

    def stop_strings(self) -> list[str]:
        return [self.sep2]


def _split_media(text: str) -> tuple[str, str]:
    """("<image>…" placeholders, the rest of the text stripped) of a user turn."""
    media = "".join(re.findall(r"<[a-z_]+>", text))
    return media, re.sub(r"<[a-z_]+>", "", text).strip()


# MiniGPT-v2 task identifiers (upstream-systems.md §3.2), keyed by our task names' first part.
MINIGPT_TASK_TAGS = {"vqa": "[vqa]", "caption": "[caption]", "refer": "[refer]", "identify": "[identify]",
                     "grounding": "[grounding]", "detection": "[detection]"}


class Llama2Template(Template):
    """MiniGPT-v2's LLaMA-2 chat format (`chat_template=True`, `end_sym="</s>"`).

    First turn: "[INST] <Img><image></Img> [task] {q}  [/INST]" (the instruction is
    "<Img><ImageHere></Img> {q} " wrapped in "[INST] {} [/INST]"); later questions are
    "<s>[INST] {q} [/INST]" and masked; every answer "{a}</s>" is learned. The task tag comes from
    the sample's task ("vqa/colour" → "[vqa]"); tasks without a tag (LLaVA data) get none.
    """

    def _question(self, text: str, first: bool, task: str | None) -> str:
        media, rest = _split_media(text)
        tag = MINIGPT_TASK_TAGS.get((task or "").split("/")[0])
        rest = f"{tag} {rest}" if tag and first else rest
        if first and media:
            return f"[INST] <Img>{media}</Img> {rest}  [/INST]"
        return f"[INST] {media}{rest} [/INST]" if first else f"{self.bos}[INST] {rest} [/INST]"

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Segment]:
        segments: list[Segment] = []
        first = True
        for turn in conversation:
            if turn.role == "user":
                segments.append(Segment(self._question(turn.text, first, task)))
                first = False
            elif turn.role == "assistant":
                segments.append(Segment(f"{turn.text}{self.eos}", supervised=True))
        return segments


# Honeybee's per-task instructions (pipeline/data_utils/templates, upstream-systems.md §2.4).
HONEYBEE_INSTRUCTIONS = {
    "vqa": "Answer the question using a single word or phrase.",
    "refer": "Provide the bounding box coordinate of the region this sentence describes.",
}


class HoneybeeTemplate(Template):
    """Honeybee's `Human:`/`AI:` format (tokenization_honeybee.encode_prompt).

    "The following is a conversation between a curious human and AI assistant. {inst}\nHuman: <image>
    \nHuman: {q}\nAI: {a}" — the text after "\nAI: " is learned, with EOS appended; everything
    else, "\nAI: " included, is masked.
    """

    system: ClassVar[str] = "The following is a conversation between a curious human and AI assistant."

    def _system(self, conversation: list[Turn], task: str | None) -> str:
        given = [t.text for t in conversation if t.role == "system"]
        instruction = HONEYBEE_INSTRUCTIONS.get((task or "").split("/")[0])
        base = given[0] if given else self.system
        return f"{base} {instruction}" if instruction else base

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Segment]:
        segments = [Segment(self._system(conversation, task))]
        for turn in conversation:
            if turn.role == "user":
                media, rest = _split_media(turn.text)
                text = (f"\nHuman: {media}" if media else "") + f"\nHuman: {rest}\nAI: "
                segments.append(Segment(text))
            elif turn.role == "assistant":
                segments.append(Segment(f"{turn.text}{self.eos}", supervised=True))
        return segments
