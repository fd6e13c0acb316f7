"""Chat templates reproduced from LLaVA's `conversation.py` (upstream-systems.md §1.5, §1.6)."""

from __future__ import annotations

from typing import ClassVar

from mmcore.kinds import Segment, Template, Turn

__all__ = ["PlainTemplate", "VicunaV1Template"]


class PlainTemplate(Template):
    """LLaVA `conv_llava_plain` (pretraining): `<image>` + caption + "\\n"; only the caption is learned.

    LLaVA `preprocess_plain` replaces the user turn by the bare placeholder; here the user turn's
    placeholders are kept and its other text dropped, so the rendering is the same.
    """

    separator: ClassVar[str] = "\n"

    def _media_only(self, text: str) -> str:
        import re

        return "".join(re.findall(r"<[a-z_]+>", text))

    def render(self, conversation: list[Turn]) -> list[Segment]:
        segments = []
        for turn in conversation:
            if turn.role == "user":
                segments.append(Segment(self._media_only(turn.text)))
            elif turn.role == "assistant":
                segments.append(Segment(turn.text + self.separator, supervised=True))
        return segments

    def generation_prompt(self, conversation: list[Turn]) -> list[Segment]:
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

    def render(self, conversation: list[Turn]) -> list[Segment]:
        segments = [Segment(self._system(conversation) + self.sep)]
        for turn in conversation:
            if turn.role == "user":
                segments.append(Segment(f"{self.roles[0]}: {turn.text}{self.sep}{self.roles[1]}:"))
            elif turn.role == "assistant":
                segments.append(Segment(f" {turn.text}{self.sep2}", supervised=True))
        return segments

    def generation_prompt(self, conversation: list[Turn]) -> list[Segment]:
        return self.render(conversation)

    def stop_strings(self) -> list[str]:
        return [self.sep2]
