"""Box losses: L1 + GIoU, normalised correctly by default, or exactly as u-LLaVA does (`"ullava"`).

u-LLaVA (OPPOMKLab/u-LLaVA 986c4fa `models/loss.py::bbox_l1_loss, bbox_giou_loss`, aggregated in
`models/ullava.py::forward`), for sample i with n_i boxes:

    l1_i   = Σ |b − g| (boxes × 4 coords) / (n_i + 1e-8)
    giou_i = Σ over predicted boxes with x2 ≥ x1 and y2 ≥ y1 of (1 − GIoU) / (n_i + 1e-8)
    l1 = Σ_i l1_i / (Σ n_i + 1e-8),  giou = Σ_i giou_i / (Σ n_i + 1e-8)

so both are divided by the box count twice (the mask terms are multiplied back by n_i, these are not),
and an invalid predicted box is dropped from GIoU yet still counted (next-systems.md §3.3).

`"mean"` (the default): l1 = Σ |b − g| / K and giou = Σ (1 − GIoU) / K over the batch's K boxes; an invalid
predicted box (x2 < x1 or y2 < y1) is taken as the degenerate box at its top-left corner, so it still gets
a GIoU gradient (towards the target) and counts once. GIoU is torchvision's `generalized_box_iou_loss`
(paired boxes; with eps = 0 it is exactly DETR's/u-LLaVA's `generalized_box_iou` on the diagonal).
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["Normalisation", "box_losses"]

Normalisation = Literal["mean", "ullava"]


def _giou_terms(pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """(n, 4) paired boxes → (n,) 1 − GIoU."""
    from torchvision.ops import generalized_box_iou_loss

    return generalized_box_iou_loss(pred, target, reduction="none", eps=eps)


def _mean(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count = pred.shape[0]
    corrected = torch.cat([pred[:, :2], torch.maximum(pred[:, 2:], pred[:, :2])], dim=1)
    return (pred - target).abs().sum() / count, _giou_terms(corrected, target, 1e-7).sum() / count


def _ullava(pred: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    l1 = giou = pred.new_zeros(())
    total = 0
    for row in rows.unique().tolist():
        chosen = rows == row
        p, g = pred[chosen], target[chosen]
        n = p.shape[0]
        valid = (p[:, 2:] >= p[:, :2]).all(-1)
        l1 = l1 + (p - g).abs().sum() / (n + 1e-8)
        giou = giou + _giou_terms(p[valid], g[valid], 0.0).sum() / (n + 1e-8)
        total += n
    return l1 / (total + 1e-8), giou / (total + 1e-8)


def box_losses(pred: torch.Tensor, target: torch.Tensor, rows: torch.Tensor,
               normalisation: Normalisation = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 4) predicted and target xyxy (padded-square normalised), rows (K,) their batch rows →
    unweighted (L1, GIoU) losses."""
    pred, target = pred.float(), target.float()
    return _ullava(pred, target, rows) if normalisation == "ullava" else _mean(pred, target)
