"""The padded square u-LLaVA's boxes live in, and the head's own view that measures it.

u-LLaVA (`dataset/tools/mask_toolbox.py::DetToolBox`, OPPOMKLab/u-LLaVA 986c4fa) pads the image to a square
of side max(H, W), **centred** (pad (max − W)/2 left, (max − H)/2 top — not SAM's bottom-right padding), and
normalises xyxy by that side (`pad_normalize_xyxy` / `denormalize_padded_xyxy`). The head's view therefore
needs only the original (H, W), read from the image header; it is the head's own view, so the box head works
with or without a SAM head next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcore.kinds import MediaView, Viewed

__all__ = ["ImageSizeView", "image_size", "pad_denormalize_xyxy", "pad_normalize_xyxy"]


def image_size(item: Any) -> tuple[int, int]:
    """(H, W) of a path (header only), PIL image or (H, W[, C]) array."""
    from PIL import Image

    if isinstance(item, (str, Path)):
        with Image.open(item) as opened:
            width, height = opened.size
            return int(height), int(width)
    if isinstance(item, Image.Image):
        return int(item.size[1]), int(item.size[0])
    shape = np.shape(item)
    if len(shape) not in (2, 3) or min(shape[:2]) < 1:
        raise ValueError(f"an image array must be (H, W) or (H, W, C), got {shape}")
    return int(shape[0]), int(shape[1])


class ImageSizeView(MediaView):
    """(2,) long tensor [H, W] + {"original_size": (H, W)}: the geometry of the padded square."""

    def __call__(self, item: Any, modality: str) -> Viewed:
        height, width = image_size(item)
        return torch.tensor([height, width], dtype=torch.long), {"original_size": (height, width)}


def _square(sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, 2) [H, W] → side (K,), pad_x (K,), pad_y (K,) (DetToolBox.get_pad_length)."""
    sizes = sizes.to(torch.float32)
    side = sizes.max(dim=1).values
    return side, (side - sizes[:, 1]) / 2, (side - sizes[:, 0]) / 2


def pad_normalize_xyxy(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """(K, 4) xyxy pixels of images (K, 2) [H, W] → xyxy in [0, 1] of the centred padded square."""
    side, pad_x, pad_y = _square(sizes.to(boxes.device))
    shift = torch.stack([pad_x, pad_y, pad_x, pad_y], dim=1)
    return (boxes + shift) / side[:, None]


def pad_denormalize_xyxy(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """The inverse: padded-square xyxy → pixels of the original image."""
    side, pad_x, pad_y = _square(sizes.to(boxes.device))
    shift = torch.stack([pad_x, pad_y, pad_x, pad_y], dim=1)
    return boxes * side[:, None] - shift
