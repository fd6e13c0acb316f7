"""Referring-segmentation metrics as u-LLaVA's evaluation computes them (OPPOMKLab/u-LLaVA 986c4fa
`evaluation/eval_ullava.py::validate` + `evaluation/tools.py::intersectionAndUnionGPU`, K = 2, class 1):

* a predicted mask is `logits > 0`; target pixels equal to 255 are ignored;
* cIoU = Σ I / (Σ U + 1e-10) over every mask of the split;
* gIoU = mean over masks of I / (U + 1e-5), a mask with U = 0 (empty prediction, empty target) counting 1.

Fractions in [0, 1] (u-LLaVA prints them × 100). Upstream's `torch.histc` on int tensors fails on CPU
inside a bare `try/except: continue`, so there every mask would be skipped; counting pixels directly gives
its CUDA result everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmcore.errors import MmcoreError
from mmcore.kinds import match_targets

__all__ = ["IGNORE_LABEL", "MaskIoU", "intersection_union"]

IGNORE_LABEL = 255  # intersectionAndUnionGPU(ignore_index=255)


def intersection_union(prediction: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(H, W) logits (thresholded at 0) or bool, and a {0, 1, 255} target → foreground (I, U) pixel counts."""
    predicted = prediction if prediction.dtype == torch.bool else prediction > 0
    target = target.to(predicted.device)
    valid = target != IGNORE_LABEL
    truth = (target == 1) & valid
    predicted = predicted & valid
    intersection = int((predicted & truth).sum())
    return float(intersection), float(int(predicted.sum()) + int(truth.sum()) - intersection)


@dataclass
class MaskIoU:
    """Accumulates cIoU / gIoU; the sums are plain numbers so ranks can add them up."""

    intersection: float = 0.0
    union: float = 0.0
    iou_sum: float = 0.0
    count: int = 0

    def add(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """One predicted mask against its target (same (H, W))."""
        if tuple(prediction.shape) != tuple(target.shape):
            raise MmcoreError(f"mask metric: a prediction is {tuple(prediction.shape)} but its target is "
                              f"{tuple(target.shape)} (H, W); targets must have the original image's size")
        intersection, union = intersection_union(prediction, target)
        self.intersection += intersection
        self.union += union
        self.iou_sum += intersection / (union + 1e-5) + (1.0 if union == 0 else 0.0)
        self.count += 1

    def miss(self, target: Any) -> None:
        """A target the model predicted nothing for (free-running: no [SEG] generated) — an empty mask."""
        target = torch.as_tensor(target)
        self.add(torch.zeros(target.shape, dtype=torch.bool), target)

    def update(self, predictions: dict[str, torch.Tensor], targets: Any, head: str = "sam-mask",
               trigger: str = "[SEG]") -> None:
        """A `sam-mask` head's predictions (teacher-forced: one per target) against the batch's `masks`."""
        matched = match_targets(targets, "masks", predictions["sample_index"], head, trigger) or []
        for k, target in enumerate(matched):
            h, w = (int(s) for s in predictions["sizes"][k].tolist())
            self.add(predictions["masks"][k, :h, :w], target)

    def result(self) -> dict[str, float]:
        return {"ciou": self.intersection / (self.union + 1e-10),
                "giou": self.iou_sum / self.count if self.count else 0.0, "masks": float(self.count)}
