"""box-decoder head: u-LLaVA's layout and counts, its own size view, targets, losses, checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from mmcore_plugin_box_decoder.geometry import pad_normalize_xyxy
from mmcore_plugin_box_decoder.head import BoxDecoderHead
from mmcore_plugin_box_decoder.losses import box_losses

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext


def _head(**options: Any) -> BoxDecoderHead:
    config = BoxDecoderHead.Config.model_validate({**BoxDecoderHead.tiny_config(), **options})
    torch.manual_seed(0)
    head = BoxDecoderHead(config, BuildContext(name="loc", llm_hidden_size=48))
    head.trigger_id = 8
    return head


def _media(head: BoxDecoderHead, sizes: list[tuple[int, int]]) -> dict[str, Any]:
    from mmcore.sequence import MediaBatch

    viewed = [head.media_view()(torch.zeros(h, w, 3, dtype=torch.uint8).numpy(), "image") for h, w in sizes]
    return {"image": MediaBatch({head.view_key: torch.stack([t for t, _ in viewed])}, torch.arange(len(sizes)),
                                {head.view_key: [m for _, m in viewed]})}


def test_ullava_layout_and_counts() -> None:
    """det_projector Linear(D,D)-ReLU-Linear(D,256)-Dropout(0) = 17,830,144 and det_decoder
    Linear(256,256)-ReLU-Linear(256,128)-ReLU-Linear(128,4) = 99,204 at D = 4096 (next-systems.md §3.2), with
    u-LLaVA's key names."""
    head = BoxDecoderHead(BoxDecoderHead.Config(), BuildContext(name="loc", device=torch.device("meta"),
                                                                llm_hidden_size=4096))
    assert sum(p.numel() for p in head.det_projector.parameters()) == 17_830_144
    assert sum(p.numel() for p in head.det_decoder.parameters()) == 99_204
    assert set(head.state_dict()) == {f"det_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")} | \
        {f"det_decoder.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


def test_view_reads_the_image_size(tmp_path: Path) -> None:
    """The head's own view gives [H, W] of a file (header only), a PIL image or an array."""
    from PIL import Image

    Image.new("RGB", (50, 30)).save(tmp_path / "a.png")
    view = _head().media_view()
    for item in (tmp_path / "a.png", Image.new("RGB", (50, 30)), torch.zeros(30, 50, 3).numpy()):
        tensor, meta = view(item, "image")
        assert tensor.tolist() == [30, 50] and meta == {"original_size": (30, 50)}
    with pytest.raises(OSError):
        (tmp_path / "b.png").write_text("not an image")
        view(tmp_path / "b.png", "image")


def test_forward_boxes_pixels_and_weighted_losses() -> None:
    """Predictions are padded-square xyxy plus pixel boxes of each prompt's image; losses are the pixel
    targets normalised with that image's size, each term weighted on its own."""
    head = _head(l1_weight=2.0, giou_weight=3.0, loss_weight=0.5)
    media = _media(head, [(30, 50), (40, 20)])
    targets = [{"boxes": [[5, 5, 20, 25]]}, {"boxes": [[1, 2, 10, 30], [0, 0, 20, 40]]}]
    rows = torch.tensor([0, 1, 1])
    out = head(torch.randn(3, 48), rows, media, targets)
    sizes = torch.tensor([[30, 50], [40, 20], [40, 20]])
    assert torch.equal(out.predictions["sizes"], sizes)
    assert torch.allclose(pad_normalize_xyxy(out.predictions["boxes_pixels"], sizes), out.predictions["boxes"],
                          atol=1e-5)
    gts = pad_normalize_xyxy(torch.tensor([[5.0, 5, 20, 25], [1, 2, 10, 30], [0, 0, 20, 40]]), sizes)
    l1, giou = box_losses(out.predictions["boxes"], gts, rows)
    assert torch.allclose(out.losses["l1"], 0.5 * 2.0 * l1) and torch.allclose(out.losses["giou"], 0.5 * 3.0 * giou)


@dataclass
class _Tensors:
    values: torch.Tensor
    sample_index: torch.Tensor


def test_tensor_targets_and_errors() -> None:
    """Tensor targets with a sample index equal per-sample lists; a count mismatch or an inverted target box
    is a one-line error; without targets there is no loss."""
    head = _head()
    media = _media(head, [(30, 50), (40, 20)])
    hidden, rows = torch.randn(2, 48), torch.tensor([0, 1])
    lists = [{"boxes": [[5, 5, 20, 25]]}, {"boxes": [[1, 2, 10, 30]]}]
    tensors = {"boxes": _Tensors(torch.tensor([[5.0, 5, 20, 25], [1, 2, 10, 30]]), torch.tensor([0, 1]))}
    assert torch.equal(head(hidden, rows, media, lists).losses["l1"], head(hidden, rows, media, tensors).losses["l1"])
    assert head(hidden, rows, media, None).losses == {}
    with pytest.raises(MmcoreError, match=r"batch row 1 has 1 '\[LOC\]' trigger\(s\) but 0 'boxes' target"):
        head(hidden, rows, media, [*lists[:1], {}])
    with pytest.raises(MmcoreError, match=r"box target 0 is \[20\.0, 5\.0, 5\.0, 25\.0\]"):
        head(hidden[:1], rows[:1], media, [{"boxes": [[20, 5, 5, 25]]}])


def test_ullava_checkpoint_keys_load(tmp_path: Path) -> None:
    """u-LLaVA's `det_projector.*` / `det_decoder.*` load from its whole-model checkpoint; other keys are
    left to other components."""
    from mmcore.assembly import assemble
    from mmcore.testing import tiny_manifest

    head = BoxDecoderHead(BoxDecoderHead.Config(out_dim=16), BuildContext(name="loc", llm_hidden_size=32))
    state = {k: torch.randn_like(v) for k, v in head.state_dict().items()}  # the tiny manifest's LLM is 32 wide
    state.update({"seg_projector.0.weight": torch.zeros(2, 2), "visual_model.mask_decoder.iou_token.weight":
                  torch.zeros(1, 4), "llm.lm_head.weight": torch.zeros(3, 3)})
    torch.save(state, tmp_path / "ullava.bin")
    (tmp_path / "m.toml").write_text(tiny_manifest(
        'type = "mlp"', extra='\n[model.heads.loc]\ntype = "box-decoder"\nout_dim = 16\nweights = "ullava.bin"\n'))
    loaded = assemble(tmp_path / "m.toml", device="cpu").model.heads["loc"]
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_view_is_picklable_and_a_prompt_needs_an_image() -> None:
    """The size view pickles for spawned workers; a [LOC] in a sample without an image is a one-line error."""
    import pickle

    head = _head()
    assert len(pickle.dumps(head.media_view())) < 1000
    with pytest.raises(MmcoreError, match=r"batch row\(s\) \[1\] have a '\[LOC\]' trigger but no image"):
        head(torch.randn(1, 48), torch.tensor([1]), _media(head, [(30, 50)]), None)
