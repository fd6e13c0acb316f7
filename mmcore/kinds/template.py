"""Templates render a conversation into text segments, each marked supervised or not.

The sequence builder tokenizes segments one by one, so labels come from token ids and never from
re-tokenising a rendered string (LLaVA's "tokenization mismatch").
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from mmcore.kinds._base import BuildContext, ComponentConfig, DataComponent
from mmcore.kinds.sample import Segment, Turn

__all__ = ["Template"]


class Template(DataComponent):
    """Base template. `add_bos`: the builder puts the tokenizer's BOS first."""

    kind: ClassVar[str] = "template"
    add_bos: ClassVar[bool] = True

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        tokenizer = ctx.tokenizer
        self.eos: str = getattr(tokenizer, "eos_token", None) or "</s>"
        self.bos: str = getattr(tokenizer, "bos_token", None) or "<s>"

    @abstractmethod
    def render(self, conversation: list[Turn], task: str | None = None) -> list[Segment]:
        """A whole conversation (for training): assistant replies are the supervised segments.
        `task` (e.g. "vqa/colour", "refer") lets templates add task tags or instructions."""

    def generation_prompt(self, conversation: list[Turn], task: str | None = None) -> list[Segment]:
        """A conversation ending with a user turn, rendered up to where the assistant starts."""
        return self.render(conversation, task)

    def stop_strings(self) -> list[str]:
        """Text after which a generated answer ends (besides the tokenizer's EOS id)."""
        return [self.eos]
