"""Box codecs: how a model writes a bounding box as text, and how to read it back."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from mmcore.kinds._base import DataComponent

__all__ = ["Box", "BoxCodec"]

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


class BoxCodec(DataComponent):
    """Base box codec (entry-point group `mmcore.box_codecs`)."""

    kind: ClassVar[str] = "box_codec"

    @abstractmethod
    def encode(self, box: Box, size: tuple[int, int]) -> str:
        """A pixel box in an image of `size` (width, height) → its text."""

    @abstractmethod
    def decode(self, text: str, size: tuple[int, int]) -> Box | None:
        """The first box written in `text` → pixels, or None when there is none."""
