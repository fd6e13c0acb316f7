"""`box-decoder`: u-LLaVA's box head (`models/ullava.py::init_det_modules`, OPPOMKLab/u-LLaVA 986c4fa).

    hidden before [LOC] (K, D) → det_projector: Linear(D, D), ReLU, Linear(D, 256), Dropout(0)
        → det_decoder: Linear(256, 256), ReLU, Linear(256, 128), ReLU, Linear(128, 4)
        → (K, 4) raw xyxy (no sigmoid), normalised to the image's centred padded square

Targets are xyxy pixel boxes of the original image (`Sample.targets["boxes"]`); the head normalises them
with the image size its own view measured (`geometry.py`). Losses: L1 × 1 + GIoU × 1, normalised once
over the batch's boxes by default, or as u-LLaVA does with `loss_normalisation = "ullava"` (`losses.py`).
Module names are u-LLaVA's, so its `det_projector.*` / `det_decoder.*` checkpoint keys load as they are.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, ComponentConfig, Head, HeadConfig, HeadOutput, Overlay, match_targets
from mmcore_plugin_box_decoder.geometry import ImageSizeView, pad_denormalize_xyxy, pad_normalize_xyxy
from mmcore_plugin_box_decoder.losses import Normalisation, box_losses
from mmcore_plugin_box_decoder.metrics import BoxPrecision

__all__ = ["BoxDecoderHead", "BoxDecoderHeadConfig"]


class BoxDecoderHeadConfig(HeadConfig):
    trigger_token: str = "[LOC]"  # u-LLaVA DEFAULT_LOC_TOKEN (models/__init__.py)
    out_dim: int = Field(256, ge=2)  # u-LLaVA UllavaConfig.out_dim
    l1_weight: float = Field(1.0, ge=0)  # UllavaConfig.l1_weight
    giou_weight: float = Field(1.0, ge=0)  # UllavaConfig.iou_weight
    # "mean": divide once by the batch's box count (default); "ullava": u-LLaVA's double division and
    # dropped-but-counted invalid boxes, to reproduce its training exactly.
    loss_normalisation: Normalisation = "mean"


class BoxDecoderHead(Head):
    Config: ClassVar[type[ComponentConfig]] = BoxDecoderHeadConfig
    view_modalities: ClassVar[tuple[str, ...]] = ("image",)
    target_key: ClassVar[str] = "boxes"  # Sample.targets["boxes"]: one per trigger, in order
    config: BoxDecoderHeadConfig

    def __init__(self, config: BoxDecoderHeadConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        width, out = self.llm_hidden_size, config.out_dim
        with ctx.device:
            self.det_projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out),
                                               nn.Dropout(0.0))
            self.det_decoder = nn.Sequential(nn.Linear(out, out), nn.ReLU(), nn.Linear(out, out // 2), nn.ReLU(),
                                             nn.Linear(out // 2, 4))

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"out_dim": 16}

    @property
    def view_key(self) -> str:
        """Where the collated batch keeps this head's view: `media["image"].views[view_key]` (N, 2) [H, W]."""
        return f"heads.{self.name}"

    def media_view(self, **preprocessing: Any) -> ImageSizeView:
        return ImageSizeView()

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A u-LLaVA checkpoint: keep `det_projector.*` and `det_decoder.*`, leave the rest to other components."""
        if any(k.startswith("det_decoder.") for k in state) and not set(state) <= set(self.state_dict()):
            return {k: v for k, v in state.items() if k.startswith(("det_projector.", "det_decoder."))}
        return super().adapt_state_dict(state)

    def forward(self, hidden: torch.Tensor, sample_index: torch.Tensor, media: dict[str, Any],
                targets: Any) -> HeadOutput:
        """hidden (K, D) before each [LOC], sample_index (K,) → boxes (+ weighted L1 and GIoU losses)."""
        boxes = self.det_decoder(self.det_projector(hidden))  # (K, 4) padded-square xyxy
        sizes = self._image_sizes(sample_index, media)  # (K, 2) [H, W]
        predictions = {"boxes": boxes, "boxes_pixels": pad_denormalize_xyxy(boxes.detach().float(), sizes),
                       "sizes": sizes, "sample_index": sample_index}
        gts = match_targets(targets, self.target_key, sample_index, self.name, self.trigger_token)
        if not gts:
            return HeadOutput(predictions=predictions)
        pixels = torch.stack([g.to(device=boxes.device, dtype=torch.float32).reshape(4) for g in gts])  # (K, 4)
        invalid = (pixels[:, 2:] < pixels[:, :2]).any(-1)
        if bool(invalid.any()):
            raise MmcoreError(f"head '{self.name}': box target {int(invalid.nonzero()[0])} is "
                              f"{pixels[invalid][0].tolist()}; targets are xyxy pixels with x2 ≥ x1 and y2 ≥ y1")
        l1, giou = box_losses(boxes, pad_normalize_xyxy(pixels, sizes), sample_index,
                              self.config.loss_normalisation)
        weight = self.config.loss_weight
        return HeadOutput(predictions=predictions, losses={"l1": weight * self.config.l1_weight * l1,
                                                           "giou": weight * self.config.giou_weight * giou})

    def _image_sizes(self, sample_index: torch.Tensor, media: dict[str, Any]) -> torch.Tensor:
        """(K, 2) [H, W] of the first image of each prompt's sample (u-LLaVA: one image per sample)."""
        if sample_index.numel() == 0:
            return torch.zeros(0, 2, dtype=torch.long, device=sample_index.device)
        images = media.get("image")
        if images is None or self.view_key not in images.views:
            raise MmcoreError(f"head '{self.name}': the batch holds no '{self.view_key}' image view; build batches "
                              f"with the run's Processor, which runs the head's own view")
        first: dict[int, int] = {}
        for item, row in enumerate(images.sample_index.tolist()):
            first.setdefault(int(row), item)
        missing = sorted({r for r in sample_index.tolist() if r not in first})
        if missing:
            raise MmcoreError(f"head '{self.name}': batch row(s) {missing} have a '{self.trigger_token}' trigger but "
                              f"no image to locate it in")
        items = torch.tensor([first[r] for r in sample_index.tolist()], device=images.views[self.view_key].device)
        return images.views[self.view_key][items].to(sample_index.device)

    # --- evaluation and tests --------------------------------------------------------------------
    def metrics(self) -> BoxPrecision:
        """An accumulator of box Prec@0.5 over this head's predictions (`update(predictions, targets)`)."""
        return BoxPrecision()

    def overlays(self, predictions: dict[str, Any]) -> list[Overlay]:
        """One sample's boxes in pixels of its image, in [LOC] order."""
        return [Overlay("box", tuple(float(v) for v in box), self.name) for box in predictions["boxes_pixels"].tolist()]

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance inputs: images of different sizes through the head's own view, 0…k prompts per sample
        (the first has none), one pixel box target per prompt."""
        from mmcore.sequence import MediaBatch

        view = self.media_view()
        counts = [i % 3 for i in range(batch_size)]
        sizes = [(24 + 8 * i, 40 - 4 * i) for i in range(batch_size)]
        viewed = [view(torch.zeros(*size, 3).numpy(), "image") for size in sizes]
        targets = []
        for (h, w), count in zip(sizes, counts, strict=True):
            corners = torch.rand(count, 2, 2) * torch.tensor([w, h])
            targets.append({"boxes": [torch.cat([c.min(0).values, c.max(0).values]).tolist() for c in corners]})
        media = {"image": MediaBatch({self.view_key: torch.stack([t for t, _ in viewed])}, torch.arange(batch_size),
                                     {self.view_key: [m for _, m in viewed]})}
        sample_index = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)], dtype=torch.long)
        return torch.randn(len(sample_index), self.llm_hidden_size), sample_index, media, targets
