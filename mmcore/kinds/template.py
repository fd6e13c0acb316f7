"""Templates render a conversation the way an upstream system renders and tokenises it.

Token-exactness rule (DESIGN.md "Sequence building"): a template returns `Piece`s — each one the text
that the upstream code hands to ONE tokenizer call (or one special token it inserts by id) — and the
character spans whose tokens are learned. The sequence builder tokenises each piece as that call did and
maps the learned spans onto tokens through the tokenizer's character offsets, so labels never come from
re-tokenising a fragment on its own (LLaVA's "tokenization mismatch") and ids never gain a `▁` that the
upstream prompt does not have. Media placeholders (`<image>`) always end one call and start the next, as
in every upstream system (LLaVA `tokenizer_image_token`, MiniGPT-v2 `prompt_wrap`, Honeybee
`encode_prompt`).
"""

from __future__ import annotations

import re
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

from mmcore.kinds._base import BuildContext, ComponentConfig, DataComponent
from mmcore.kinds.sample import Turn

__all__ = ["Piece", "Template", "split_media"]

Span = tuple[int, int]


@dataclass(frozen=True)
class Piece:
    """One tokenizer call of the upstream code, or one special token it inserts by id.

    `learn`: True when every token of the piece is learned, or the character spans of `text` that are.
    `special_tokens`: the call's `add_special_tokens` (LLaVA calls `tokenizer(chunk)`, which adds the
    tokenizer's own BOS; a placeholder inside the piece keeps it once, as `tokenizer_image_token` does).
    `token`: instead of text, the tokenizer's BOS or EOS id (MiniGPT-v2 prepends BOS, Honeybee appends EOS).
    """

    text: str = ""
    learn: bool | tuple[Span, ...] = False
    special_tokens: bool = False
    token: Literal["bos", "eos"] | None = None

    @classmethod
    def bos(cls) -> Piece:
        return cls(token="bos")

    @classmethod
    def eos(cls, learn: bool = False) -> Piece:
        return cls(token="eos", learn=learn)

    def spans(self) -> tuple[Span, ...]:
        """The learned character spans of `text`."""
        if self.learn is True:
            return ((0, len(self.text)),)
        return self.learn or ()


_PLACEHOLDER = re.compile(r"<[a-z_]+>")


def split_media(text: str) -> tuple[str, str]:
    """("<image>…" placeholders in order, the rest of the text stripped) of a user turn."""
    return "".join(_PLACEHOLDER.findall(text)), _PLACEHOLDER.sub("", text).strip()


class Template(DataComponent):
    """Base template (entry-point group `mmcore.templates`)."""

    kind: ClassVar[str] = "template"

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        tokenizer = ctx.tokenizer
        self.eos_text: str = getattr(tokenizer, "eos_token", None) or "</s>"
        self.bos_text: str = getattr(tokenizer, "bos_token", None) or "<s>"

    @abstractmethod
    def render(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        """A whole conversation (for training): the assistant replies are the learned spans.
        `task` (e.g. "vqa/colour", "refer") lets templates add task tags or instructions."""

    @abstractmethod
    def generation_prompt(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        """A conversation ending with a user turn, rendered up to where the assistant's reply starts,
        as the upstream inference code builds it."""

    def stop_strings(self) -> list[str]:
        """Text after which a generated answer ends (besides the tokenizer's EOS id)."""
        return [self.eos_text]

    def answer(self, generated: str) -> str:
        """The answer in the decoded new tokens (templates whose upstream post-processes override this)."""
        for stop in self.stop_strings():
            generated = generated.split(stop)[0]
        return generated.strip()
