"""Box losses, geometry and Prec@0.5, pinned against u-LLaVA's own code.

The pinned numbers come from running OPPOMKLab/u-LLaVA 986c4fa `models/loss.py` (bbox_l1_loss,
bbox_giou_loss) with the aggregation of `models/ullava.py::forward`, `dataset/tools/mask_toolbox.py::
DetToolBox` and `evaluation/tools.py::bbox_iou` (as `evaluation/eval_ullava.py::validate` calls it) on the
literal boxes below, in a scratch folder outside the repository (next-systems.md §3.3 lists the cases).
"""

from __future__ import annotations

import pytest
import torch
from mmcore_plugin_box_decoder.geometry import pad_denormalize_xyxy, pad_normalize_xyxy
from mmcore_plugin_box_decoder.losses import box_losses
from mmcore_plugin_box_decoder.metrics import BoxPrecision, paired_box_iou

A = ([0.10, 0.20, 0.50, 0.60], [0.15, 0.20, 0.55, 0.70])
B = ([0.30, 0.30, 0.90, 0.80], [0.20, 0.35, 0.80, 0.90])
C = ([0.05, 0.40, 0.45, 0.95], [0.00, 0.50, 0.40, 1.00])
INVALID = ([0.60, 0.20, 0.40, 0.70], [0.30, 0.20, 0.70, 0.60])  # predicted x2 < x1

# case: boxes per sample → u-LLaVA's (l1, giou), weights 1.0
ULLAVA = {
    "one_per_sample": ([[A], [A], [A]], (0.19999998807907104, 0.3858586251735687)),
    "three_in_one": ([[A, A, A]], (0.06666666269302368, 0.12861953675746918)),
    "invalid_of_two": ([[A, INVALID]], (0.22499997913837433, 0.09646464884281158)),
    "valid_two": ([[A, A]], (0.09999999403953552, 0.19292929768562317)),
    "mixed": ([[A, B], [C], []], (0.17499999701976776, 0.28692883253097534)),
}


def _flat(samples: list[list[tuple[list[float], list[float]]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pairs = [(p, g, row) for row, sample in enumerate(samples) for p, g in sample]
    return (torch.tensor([p for p, _, _ in pairs]), torch.tensor([g for _, g, _ in pairs]),
            torch.tensor([r for _, _, r in pairs]))


@pytest.mark.parametrize("case", list(ULLAVA))
def test_ullava_normalisation_equals_ullava(case: str) -> None:
    """`loss_normalisation = "ullava"`: divided by the box count twice, invalid boxes dropped from GIoU but
    counted — u-LLaVA's values."""
    samples, (l1, giou) = ULLAVA[case]
    got = box_losses(*_flat(samples), normalisation="ullava")
    assert float(got[0]) == pytest.approx(l1, rel=1e-6) and float(got[1]) == pytest.approx(giou, rel=1e-6)


def test_mean_normalisation_does_not_depend_on_grouping() -> None:
    """The default divides once by the batch's box count: the same per-box error gives the same loss with one
    box per sample or three in one (u-LLaVA: 0.2/0.386 vs 0.067/0.129)."""
    per_box = ULLAVA["one_per_sample"][1]
    for case in ("one_per_sample", "three_in_one", "valid_two"):
        l1, giou = box_losses(*_flat(ULLAVA[case][0]))
        assert float(l1) == pytest.approx(per_box[0], rel=1e-6) and float(giou) == pytest.approx(per_box[1], rel=1e-6)


def test_mean_normalisation_keeps_invalid_boxes() -> None:
    """An invalid predicted box counts once and still pulls towards its target through GIoU."""
    pred, target, rows = _flat(ULLAVA["invalid_of_two"][0])
    pred.requires_grad_(True)
    _, giou = box_losses(pred, target, rows)
    valid_only = box_losses(*_flat([[A]]))[1]
    assert torch.isfinite(giou) and float(giou.detach()) > float(valid_only) / 2  # the invalid term is > 0
    giou.backward()
    assert pred.grad is not None and pred.grad[1].abs().sum() > 0


def test_geometry_is_ullavas_padded_square() -> None:
    """Pixel xyxy ↔ the centred padded square, as DetToolBox.pad_normalize_xyxy / denormalize_padded_xyxy."""
    boxes = torch.tensor([[10.0, 20, 110, 220], [5, 7, 30, 90], [0, 0, 64, 64]])
    sizes = torch.tensor([[480, 640], [500, 300], [64, 64]])  # [H, W]
    expected = torch.tensor([[0.015625, 0.15625, 0.171875, 0.46875], [0.21, 0.014, 0.26, 0.18], [0, 0, 1, 1]])
    assert torch.allclose(pad_normalize_xyxy(boxes, sizes), expected, atol=1e-7)
    back = pad_denormalize_xyxy(torch.tensor([[0.1, 0.2, 0.7, 0.9]]), torch.tensor([[500, 300]]))
    assert torch.allclose(back, torch.tensor([[-50.0, 100.0, 250.0, 450.0]]), atol=1e-4)
    assert torch.allclose(pad_denormalize_xyxy(pad_normalize_xyxy(boxes, sizes), sizes), boxes, atol=1e-4)


def test_prec_at_half_equals_ullava_eval() -> None:
    """Prec@0.5 is strict (IoU exactly 0.5 misses) on torchvision's box_iou × 1000, as u-LLaVA's eval."""
    from torchvision.ops import box_iou

    pred = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0, 0, 0.2, 0.2], [0.6, 0.6, 0.4, 0.4], [0.2, 0.2, 0.6, 0.6]])
    gt = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0, 0, 0.3, 0.3], [0.4, 0.4, 0.6, 0.6], [0.2, 0.2, 0.6, 0.4]])
    ious = paired_box_iou(pred * 1000, gt * 1000)
    assert torch.equal(ious, box_iou(pred * 1000, gt * 1000).diagonal())
    assert torch.allclose(ious, torch.tensor([1.0, 0.4444444477558136, 0.0, 0.5]))
    metric = BoxPrecision()
    metric.add(pred, gt)
    assert metric.result()["prec@0.5"] == 0.25 and metric.result()["boxes"] == 4
