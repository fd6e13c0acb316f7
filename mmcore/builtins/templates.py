"""Chat templates reproduced from LLaVA's `conversation.py` (upstream-systems.md §1.5, §1.6)."""

from __future__ import annotations

import re
from typing import ClassVar

from mmcore.kinds import Segment, Template, Turn

__all__ = ["HoneybeeCoarseTemplate", "HoneybeeTemplate", "Llama2Template", "PlainTemplate", "VicunaV1Template"]


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


# Honeybee instructs existing datasets with (instruction, input, target) triples (pipeline/data_utils/templates,
# upstream-systems.md §2.4); the instruction joins the system line, input and target fill a Human/AI turn.
# Coarse-grained: one triple per task family, shared across datasets — Honeybee's own strings.
HONEYBEE_COARSE: dict[str, tuple[str, str, str]] = {
    "vqa": ("Answer the question using a single word or phrase.", "{question}", "{answer}"),
    "vqa-o": ("Answer with the option's letter from the given choices directly.", "{question}", "{answer}"),
    "refer": ("Provide the bounding box coordinate of the region this sentence describes.", "{question}", "{answer}"),
    "caption": ("", "{question}", "{answer}"),
}
# Fine-grained: one triple per dataset (keyed by the full task), Honeybee's final recipe (its Table 5c: fine
# beats coarse when datasets share inputs but differ in answers, e.g. RefCOCO vs RefCOCO+). These are the
# synthetic-shapes datasets' own; a task without an entry falls back to its family's coarse triple.
HONEYBEE_FINE: dict[str, tuple[str, str, str]] = {
    "vqa/colour": ("Answer the question about an object's colour with a single colour word.", "{question}",
                   "{answer}"),
    "vqa/shape": ("Answer the question about an object's shape with a single shape word.", "{question}", "{answer}"),
    "vqa/count": ("Answer the counting question with a single number.", "{question}", "{answer}"),
    "vqa/spatial": ("Answer the question about where objects lie with a single word.", "{question}", "{answer}"),
    "refer": ("Provide the bounding box coordinate of the region this sentence describes.", "{question}",
              "{answer}"),
    "caption": ("Describe the image in one short sentence.", "{question}", "{answer}"),
}


class HoneybeeTemplate(Template):
    """Honeybee's `Human:`/`AI:` format (tokenization_honeybee.encode_prompt) with fine-grained
    (per-dataset) instruction triples.

    "The following is a conversation between a curious human and AI assistant. {inst}\nHuman: <image>
    \nHuman: {input}\nAI: {target}[\nHuman: …\nAI: …]" — the text after "\nAI: " is learned, with EOS
    appended; everything else, "\nAI: " included, is masked. Packed multi-turn samples render one
    Human/AI pair per turn under one instruction.
    """

    system: ClassVar[str] = "The following is a conversation between a curious human and AI assistant."
    granularity: ClassVar[str] = "fine"

    def pattern(self, task: str | None) -> tuple[str, str, str]:
        """The (instruction, input, target) triple for `task`."""
        family = (task or "").split("/")[0]
        if self.granularity == "fine" and task in HONEYBEE_FINE:
            return HONEYBEE_FINE[task]
        return HONEYBEE_COARSE.get(family, ("", "{question}", "{answer}"))

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Segment]:
        instruction, input_pattern, target_pattern = self.pattern(task)
        given = [t.text for t in conversation if t.role == "system"]
        system = given[0] if given else self.system
        segments = [Segment(f"{system} {instruction}" if instruction else system)]
        for turn in conversation:
            if turn.role == "user":
                media, rest = _split_media(turn.text)
                text = (f"\nHuman: {media}" if media else "") + f"\nHuman: {input_pattern.replace('{question}', rest)}"
                segments.append(Segment(text + "\nAI: "))
            elif turn.role == "assistant":
                segments.append(Segment(f"{target_pattern.replace('{answer}', turn.text)}{self.eos}", supervised=True))
        return segments


class HoneybeeCoarseTemplate(HoneybeeTemplate):
    """`honeybee` with coarse-grained templates: one shared triple per task family."""

    granularity: ClassVar[str] = "coarse"
