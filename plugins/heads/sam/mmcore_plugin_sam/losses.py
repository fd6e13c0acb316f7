"""u-LLaVA's mask losses, per mask (`models/loss.py` at OPPOMKLab/u-LLaVA 986c4fa).

The head sums the per-mask values over the batch and divides by the number of masks once — what
`models/ullava.py::forward` computes (per sample `loss(·, n_i) · n_i`, then `/ Σ n_i`), up to its 1e-8
guards — and weights them (bce 2.0, dice 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dice_per_mask", "mask_losses", "sigmoid_bce_per_mask"]


def sigmoid_bce_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, H, W) logits and {0, 1} targets → (n,): BCE-with-logits, mean over pixels (`sigmoid_ce_loss`)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.flatten(1).mean(1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0,
                  eps: float = 1e-6) -> torch.Tensor:
    """(n, H, W) → (n,): 1 − (2 Σ p/s·t + eps) / (Σ p/s + Σ t/s + eps), p = sigmoid (`dice_loss`, s = 1000)."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probs / scale * targets).sum(-1)
    denominator = (probs / scale).sum(-1) + (targets / scale).sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


def mask_losses(masks: list[torch.Tensor], targets: list[torch.Tensor], scale: float = 1000.0,
                eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """K (H_k, W_k) logits maps and their {0, 1} targets (sizes may differ between masks) → unweighted
    (BCE, dice), each the mean over the K masks."""
    bce, dice = [], []
    for mask, target in zip(masks, targets, strict=True):
        target = target.to(device=mask.device, dtype=mask.dtype)[None]  # (1, H, W)
        bce.append(sigmoid_bce_per_mask(mask[None], target))
        dice.append(dice_per_mask(mask[None], target, scale, eps))
    return torch.cat(bce).sum() / len(masks), torch.cat(dice).sum() / len(masks)
