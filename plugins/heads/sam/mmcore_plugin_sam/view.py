"""SAM's own view of an image, run in data-loader workers (u-LLaVA `dataset/tools/mask_toolbox.SegToolBox`).

    RGB uint8 (H, W, 3) → segment_anything's `ResizeLongestSide(S).apply_image` → (h, w) with max(h, w) = S
    → (x − SAM mean) / SAM std → zero pad bottom and right → (3, S, S)

which is `Sam.preprocess` applied to the resized image. The original (H, W) and resized (h, w) sizes travel
as metadata: `postprocess_masks` needs them to crop the padding and return masks at the original size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmcore.kinds import MediaView, Viewed

__all__ = ["SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "SamView", "load_rgb"]

# segment_anything/build_sam.py `_build_sam` pixel_mean / pixel_std (0..255 scale), as SegToolBox
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def load_rgb(item: Any) -> np.ndarray:
    """A path, PIL image or array → (H, W, 3) uint8 RGB (u-LLaVA: cv2.imread + BGR→RGB)."""
    from PIL import Image

    if isinstance(item, (str, Path)):
        with Image.open(item) as opened:
            return np.asarray(opened.convert("RGB"))
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"))
    array = np.asarray(item)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image array must be (H, W) or (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 (0..255), got {array.dtype}")
    return array


class SamView(MediaView):
    """(3, S, S) float32 pixels + {"original_size": (H, W), "input_size": (h, w)}. Picklable (numbers only)."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, item: Any, modality: str) -> Viewed:
        from segment_anything.utils.transforms import ResizeLongestSide

        image = load_rgb(item)  # (H, W, 3)
        resized = ResizeLongestSide(self.image_size).apply_image(image)  # (h, w, 3) uint8
        pixels = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()  # (3, h, w)
        mean = torch.tensor(SAM_PIXEL_MEAN).view(-1, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD).view(-1, 1, 1)
        pixels = (pixels - mean) / std
        h, w = pixels.shape[-2:]
        pixels = F.pad(pixels, (0, self.image_size - w, 0, self.image_size - h))  # (3, S, S)
        meta = {"original_size": (int(image.shape[0]), int(image.shape[1])), "input_size": (int(h), int(w))}
        return pixels, meta
