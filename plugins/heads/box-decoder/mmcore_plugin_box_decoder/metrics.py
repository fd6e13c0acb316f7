"""Box Prec@0.5 as u-LLaVA's evaluation computes it (OPPOMKLab/u-LLaVA 986c4fa `evaluation/tools.py::bbox_iou`,
`evaluation/eval_ullava.py::validate`): per predicted/target pair, torchvision's `box_iou` of the padded-square
normalised boxes × 1000, and a hit when IoU > 0.5 (strict — a pair at exactly 0.5 misses; mmcore's text-box
eval uses ≥ 0.5 as Honeybee and MiniGPT-v2 do). Raw predictions, unclamped, as upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmcore.kinds import match_targets
from mmcore_plugin_box_decoder.geometry import pad_normalize_xyxy

__all__ = ["BoxPrecision", "paired_box_iou"]


def paired_box_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(n, 4) × (n, 4) → (n,): the diagonal of torchvision's `box_iou(pred, target)`, without the n × n matrix."""
    from torchvision.ops import box_area

    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (box_area(pred) + box_area(target) - inter)


@dataclass
class BoxPrecision:
    """Accumulates Prec@0.5 and mean IoU; plain numbers, so ranks can add them up."""

    hits: int = 0
    iou_sum: float = 0.0
    count: int = 0
    threshold: float = 0.5

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """(n, 4) predicted and target boxes, both normalised to the padded square."""
        ious = paired_box_iou(pred.detach().float() * 1000, target.detach().float().to(pred.device) * 1000)
        self.hits += int((ious > self.threshold).sum())
        self.iou_sum += float(ious.nan_to_num(0.0).sum())
        self.count += int(ious.numel())

    def miss(self, target: Any = None) -> None:
        """A target the model predicted no box for (free-running: no [LOC] generated) — a miss, IoU 0."""
        self.count += 1

    def update(self, predictions: dict[str, torch.Tensor], targets: Any, head: str = "box-decoder",
               trigger: str = "[LOC]") -> None:
        """A `box-decoder` head's predictions (teacher-forced: one per target) against the batch's pixel `boxes`."""
        matched = match_targets(targets, "boxes", predictions["sample_index"], head, trigger) or []
        if matched:
            pixels = torch.stack([m.to(torch.float32) for m in matched])
            sizes = predictions["sizes"]
            self.add(predictions["boxes"], pad_normalize_xyxy(pixels.to(sizes.device), sizes))

    def result(self) -> dict[str, float]:
        return {"prec@0.5": self.hits / self.count if self.count else 0.0,
                "miou": self.iou_sum / self.count if self.count else 0.0, "boxes": float(self.count)}
