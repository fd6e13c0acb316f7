"""sam-mask losses, targets and metrics, pinned against u-LLaVA's own code.

The pinned numbers come from running OPPOMKLab/u-LLaVA 986c4fa `models/loss.py` (sigmoid_ce_loss, dice_loss)
with the aggregation of `models/ullava.py::forward`, and `evaluation/tools.py::intersectionAndUnionGPU` with
the loop of `evaluation/eval_ullava.py::validate` (inputs cast to float: histc on ints is CUDA-only), on the
closed-form inputs below, in a scratch folder outside the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from mmcore_plugin_sam.head import unpad_masks
from mmcore_plugin_sam.losses import mask_losses
from mmcore_plugin_sam.metrics import MaskIoU

from mmcore.errors import MmcoreError


def _loss_case() -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """Sample 0: two 4×5 masks; sample 1: one 3×3 mask (flattened to a list of masks + their rows)."""
    p0 = [torch.linspace(-3, 3, 20).reshape(4, 5), torch.linspace(4, -2, 20).reshape(4, 5)]
    g0 = [(torch.arange(20) % 3 == 0).reshape(4, 5).float(), (torch.arange(20) < 7).reshape(4, 5).float()]
    p1, g1 = torch.linspace(-1, 1.5, 9).reshape(3, 3), (torch.arange(9) % 2 == 1).reshape(3, 3).float()
    return [*p0, p1], [*g0, g1], [0, 0, 1]


def test_mask_losses_equal_ullava() -> None:
    """BCE × 2 and dice × 0.5 (scale 1000, eps 1e-6) over masks of different sizes equal u-LLaVA's."""
    masks, gts, _ = _loss_case()
    bce, dice = mask_losses(masks, gts)
    assert float(2.0 * bce) == pytest.approx(1.6150959730148315, rel=1e-6)
    assert float(0.5 * dice) == pytest.approx(0.240759015083313, rel=1e-6)


def test_head_returns_each_weighted_term(kit: Any) -> None:
    """The head returns `bce` and `dice` separately, weighted (× loss_weight), from its own masks."""
    head = kit.make_head(loss_weight=3.0)
    images = [kit.image(20, 30, 0), kit.image(26, 18, 1)]
    targets = [{"masks": [torch.rand(20, 30) > 0.5]}, {"masks": [torch.rand(26, 18) > 0.5, torch.zeros(26, 18)]}]
    out = head(torch.randn(3, 48), torch.tensor([0, 1, 1]), kit.media_for(head, images), targets)
    bce, dice = mask_losses(unpad_masks(out.predictions), [t for s in targets for t in s["masks"]])
    assert set(out.losses) == {"bce", "dice"}
    assert torch.allclose(out.losses["bce"], 3.0 * 2.0 * bce) and torch.allclose(out.losses["dice"], 3.0 * 0.5 * dice)


@dataclass
class _Tensors:
    """The tensor form proposed for the core: values with a sample index (masks padded, with sizes)."""

    values: torch.Tensor
    sample_index: torch.Tensor
    sizes: torch.Tensor | None = None


def test_list_and_tensor_targets_agree(kit: Any) -> None:
    """Per-sample lists of arrays and padded tensors with a sample index give the same losses."""
    head = kit.make_head()
    images = [kit.image(20, 30, 0), kit.image(26, 18, 1)]
    masks = [torch.rand(20, 30) > 0.5, torch.rand(26, 18) > 0.5, torch.rand(26, 18) > 0.5]
    as_lists = [{"masks": [masks[0].numpy()]}, {"masks": [m.numpy() for m in masks[1:]]}]
    padded = torch.zeros(3, 26, 30, dtype=torch.bool)
    for k, m in enumerate(masks):
        padded[k, : m.shape[0], : m.shape[1]] = m
    as_tensors = {"masks": _Tensors(padded, torch.tensor([0, 1, 1]), torch.tensor([[20, 30], [26, 18], [26, 18]]))}
    hidden, rows, media = torch.randn(3, 48), torch.tensor([0, 1, 1]), kit.media_for(head, images)
    a, b = head(hidden, rows, media, as_lists), head(hidden, rows, media, as_tensors)
    assert all(torch.equal(a.losses[k], b.losses[k]) for k in ("bce", "dice"))


def test_trigger_target_mismatch_is_one_line(kit: Any) -> None:
    """Two [SEG] with one mask, or a mask of the wrong size, is a one-line error naming the row or target."""
    head = kit.make_head()
    media = kit.media_for(head, [kit.image(20, 30, 0)])
    with pytest.raises(MmcoreError, match=r"batch row 0 has 2 '\[SEG\]' trigger\(s\) but 1 'masks' target"):
        head(torch.randn(2, 48), torch.tensor([0, 0]), media, [{"masks": [torch.zeros(20, 30)]}])
    with pytest.raises(MmcoreError, match=r"mask target 0 is \(30, 20\) but its image is \(20, 30\)"):
        head(torch.randn(1, 48), torch.tensor([0]), media, [{"masks": [torch.zeros(30, 20)]}])


def test_no_prompt_no_loss_and_no_image_is_an_error(kit: Any) -> None:
    """A batch without [SEG] gives no loss term (nothing to supervise); a [SEG] in a sample without an image
    is a one-line error."""
    head = kit.make_head()
    media = kit.media_for(head, [kit.image(20, 30, 0)])
    out = head(torch.randn(0, 48), torch.zeros(0, dtype=torch.long), media, [{"masks": [torch.zeros(20, 30)]}])
    assert out.losses == {} and out.predictions["masks"].shape[0] == 0
    with pytest.raises(MmcoreError, match=r"batch row\(s\) \[1\] have a '\[SEG\]' trigger but no image"):
        head(torch.randn(1, 48), torch.tensor([1]), media, None)


def test_ciou_giou_equal_ullava_eval() -> None:
    """cIoU (ΣI/ΣU) and gIoU (mean per-mask IoU, empty/empty = 1, 255 ignored) equal u-LLaVA's evaluation."""
    preds = [torch.linspace(-3, 3, 20).reshape(4, 5), torch.full((4, 5), -1.0),
             torch.linspace(-1, 1.5, 9).reshape(3, 3), torch.full((2, 2), 2.0)]
    gts = [(torch.arange(20) % 3 == 0).reshape(4, 5), torch.zeros(4, 5, dtype=torch.bool),
           torch.tensor([[1, 255, 0], [1, 1, 255], [0, 0, 1]]), torch.zeros(2, 2)]
    metric = MaskIoU()
    for pred, gt in zip(preds, gts, strict=True):
        metric.add(pred, gt)
    result = metric.result()
    assert result["ciou"] == pytest.approx(0.2083333283662796, rel=1e-6)
    assert result["giou"] == pytest.approx(0.38690459728240967, rel=1e-6)
    assert result["masks"] == 4


def test_metric_reads_head_predictions(kit: Any) -> None:
    """`metrics().update(predictions, targets)` scores each predicted mask against its target at its own size."""
    head = kit.make_head()
    images = [kit.image(20, 30, 0), kit.image(26, 18, 1)]
    out = head(torch.randn(2, 48), torch.tensor([0, 1]), kit.media_for(head, images), None)
    masks = [m > 0 for m in unpad_masks(out.predictions)]
    metric = head.metrics()
    metric.update(out.predictions, [{"masks": [masks[0]]}, {"masks": [~masks[1]]}])  # a hit, then a full miss
    assert metric.result()["giou"] == pytest.approx(0.5, abs=1e-4) and metric.result()["ciou"] < 1.0
