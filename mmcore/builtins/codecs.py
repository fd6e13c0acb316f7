"""Box codecs of the upstream systems (upstream-systems.md §2.4, §3.2)."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field

from mmcore.kinds import ComponentConfig
from mmcore.kinds.codec import Box, BoxCodec

__all__ = ["HoneybeeBoxes", "MiniGPTBoxes"]


class HoneybeeConfig(ComponentConfig):
    decimals: int = Field(3, ge=1, le=6)  # Honeybee bbox_coord_style: 2 or 3 decimals (default 3)


class HoneybeeBoxes(BoxCodec):
    """Honeybee `preprocess_bbox`: "[x1,y1,x2,y2]", normalised by width/height, 3 decimals."""

    Config: ClassVar[type[ComponentConfig]] = HoneybeeConfig
    pattern = re.compile(r"\[\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\]")

    def encode(self, box: Box, size: tuple[int, int]) -> str:
        w, h = size
        values = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
        return "[" + ",".join(f"{v:.{self.config.decimals}f}" for v in values) + "]"

    def decode(self, text: str, size: tuple[int, int]) -> Box | None:
        match = self.pattern.search(text)
        if match is None:
            return None
        x1, y1, x2, y2 = (float(v) for v in match.groups())
        w, h = size
        return (x1 * w, y1 * h, x2 * w, y2 * h)


class MiniGPTBoxes(BoxCodec):
    """MiniGPT-v2: "{<x1><y1><x2><y2>}", integers in 0–100 of the original width and height."""

    pattern = re.compile(r"\{<(\d{1,3})><(\d{1,3})><(\d{1,3})><(\d{1,3})>\}")  # eval_ref.py's regex

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {}

    def encode(self, box: Box, size: tuple[int, int]) -> str:
        w, h = size
        values = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
        return "{" + "".join(f"<{int(v * 100)}>" for v in values) + "}"

    def decode(self, text: str, size: tuple[int, int]) -> Box | None:
        match = self.pattern.search(text)
        if match is None:
            return None
        x1, y1, x2, y2 = (int(v) / 100 for v in match.groups())
        w, h = size
        return (x1 * w, y1 * h, x2 * w, y2 * h)
