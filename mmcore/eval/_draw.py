"""Drawing what heads predicted (and the references) over an image: `mmcore generate`'s PNG, the eval sheet.

Predicted masks are blended in u-LLaVA's colour (`inference_ullava.py`: 0.5 × image + 0.5 × (133, 131, 230)),
predicted boxes drawn in orange as its `draw_bounding_boxes(colors='orange')`; references in green.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmcore.kinds import Overlay

__all__ = ["draw_overlays", "load_image", "reference_overlays"]

PREDICTED_MASK = (133, 131, 230)
PREDICTED_BOX = (255, 165, 0)
REFERENCE = (40, 200, 60)


def load_image(item: Any) -> Any:
    """A path, PIL image or (H, W[, 3]) array → an RGB PIL image."""
    from PIL import Image

    if isinstance(item, (str, Path)):
        with Image.open(item) as opened:
            return opened.convert("RGB")
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    return Image.fromarray(np.asarray(item)).convert("RGB")


def reference_overlays(targets: dict[str, Any]) -> list[Overlay]:
    """A sample's reference targets to draw: `masks` (2-D, value 1 = object) and `boxes` (xyxy pixels)."""
    masks = [Overlay("mask", np.asarray(m) == 1, "reference") for m in targets.get("masks") or []]
    boxes = [Overlay("box", tuple(float(v) for v in np.asarray(b).reshape(-1)[:4]), "reference")
             for b in targets.get("boxes") or []]
    return masks + boxes


def _blend(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    if mask.shape != image.shape[:2]:
        return  # a mask of another size than the image (a bad reference) is not drawn
    image[mask] = (0.5 * image[mask] + 0.5 * np.asarray(colour)).astype(np.uint8)


def draw_overlays(image: Any, predicted: list[Overlay], reference: list[Overlay] | None = None,
                  scale: int = 1) -> Any:
    """The image (RGB PIL) with the reference (green) then the predictions (u-LLaVA's colours) drawn on it;
    `scale` enlarges a small image first (nearest) so thin boxes stay visible."""
    from PIL import Image, ImageDraw

    base = load_image(image)
    pixels = np.array(base)
    for overlay in (reference or []) + predicted:
        if overlay.kind == "mask":
            colour = REFERENCE if overlay.head == "reference" else PREDICTED_MASK
            _blend(pixels, np.asarray(overlay.value, dtype=bool), colour)
    drawn = Image.fromarray(pixels)
    if scale > 1:
        drawn = drawn.resize((drawn.width * scale, drawn.height * scale), Image.Resampling.NEAREST)
    pen = ImageDraw.Draw(drawn)
    for overlay in (reference or []) + predicted:
        if overlay.kind == "box":
            x1, y1, x2, y2 = (float(v) * scale for v in overlay.value)
            if x2 >= x1 and y2 >= y1 and all(np.isfinite([x1, y1, x2, y2])):
                colour = REFERENCE if overlay.head == "reference" else PREDICTED_BOX
                pen.rectangle((x1, y1, x2, y2), outline=colour, width=max(1, scale))
    return drawn
