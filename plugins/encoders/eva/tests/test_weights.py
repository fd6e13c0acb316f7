"""Upstream EVA checkpoints load as BLIP-2 / MiniGPT-v2 load them (`create_eva_vit_g`).

Pinned values come from upstream's `interpolate_pos_embed` (Vision-CAIR/MiniGPT-4 d94738a
`minigpt4/models/eva_vit.py`), run outside the repo.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

# An integer-valued (1, 1 + 16·16, 8) position embedding: bicubic ×2 then has exact fp32 results, so the
# pinned bits hold on any CPU.
INTEGER_POS = (torch.arange(257 * 8).reshape(1, 257, 8) % 17 - 8).float()
UPSTREAM_32x32 = "bbdb5397c3ed0b6fdcbb59b51cebfccb3520019835064d43efd0faebb665d302"  # interpolate_pos_embed


def _sha(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


def test_pos_embed_resize_is_upstream_interpolate_pos_embed() -> None:
    """16×16 → 32×32 is bicubic without antialias, CLS slot kept: bit-equal to upstream's output."""
    from mmcore_plugin_eva.weights import resize_pos_embed

    resized = resize_pos_embed(INTEGER_POS, (32, 32), num_prefix_tokens=1)
    assert resized.shape == (1, 1025, 8) and _sha(resized) == UPSTREAM_32x32
    assert torch.equal(resized[:, 0], INTEGER_POS[:, 0])


def test_timm_checkpoint_filter_is_not_upstream() -> None:
    """timm's own checkpoint_filter_fn resizes with antialias, so it differs from upstream (next-systems §1.3)."""
    import timm
    from timm.models.eva import checkpoint_filter_fn

    model = timm.create_model("eva_giant_patch14_224", pretrained=False, img_size=448, embed_dim=8, depth=1,
                              num_heads=1, num_classes=0, global_pool="")
    filtered = checkpoint_filter_fn({"pos_embed": INTEGER_POS.clone()}, model)["pos_embed"]
    assert filtered.shape == (1, 1025, 8) and _sha(filtered) != UPSTREAM_32x32
    from mmcore_plugin_eva.weights import resize_pos_embed

    assert (filtered - resize_pos_embed(INTEGER_POS, (32, 32), 1)).abs().max() > 0.1


def _upstream_checkpoint(tower: Any, path: Path) -> dict[str, torch.Tensor]:
    """`eva_vit_g.pth`-style: bare keys, the position embedding at half the grid, one block more, fp16."""
    torch.manual_seed(5)
    state = {k: torch.randn(v.shape).half() for k, v in tower.state_dict().items()}
    h, w = tower.patch_embed.grid_size
    state["pos_embed"] = torch.randn(1, 1 + (h // 2) * (w // 2), state["pos_embed"].shape[-1]).half()
    extra = {k.replace("blocks.1.", "blocks.2."): v.clone() for k, v in state.items() if k.startswith("blocks.1.")}
    state.update(extra)
    torch.save(state, path)
    return state


TINY_ENCODER = """config = { img_size = 56, embed_dim = 64, depth = 2, num_heads = 4 }
ln_vision = true
precision = "fp32"
weights = "eva.pth"
"""


def test_upstream_checkpoint_loads_through_weights_key(build_eva: Callable[..., Any], tmp_path: Path,
                                                       eva_manifest: Callable[..., Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`weights = "eva_vit_g.pth"` (weights_only): keys 1:1, position embedding resized as upstream, a block
    the tower lacks dropped with one line, ln_vision left at γ = 1, β = 0 (MiniGPT-v2 never saves it)."""
    from mmcore_plugin_eva.weights import resize_pos_embed

    from mmcore.assembly import assemble

    tower = build_eva().visual_encoder
    state = _upstream_checkpoint(tower, tmp_path / "eva.pth")
    model = assemble(eva_manifest(TINY_ENCODER), device="cpu").model
    encoder = model.encoders["vision"]
    loaded = encoder.visual_encoder.state_dict()
    assert torch.equal(loaded["pos_embed"], resize_pos_embed(state["pos_embed"], (4, 4), 1))
    assert all(torch.equal(loaded[k], v.float()) for k, v in state.items() if k in loaded and k != "pos_embed")
    assert torch.equal(encoder.ln_vision.weight, torch.ones(64))
    assert torch.equal(encoder.ln_vision.bias, torch.zeros(64))
    notes = [line for line in capsys.readouterr().err.splitlines() if "dropped" in line]
    assert len(notes) == 1 and "dropped 13 keys" in notes[0] and "blocks.2." in notes[0]


def test_minigpt_full_model_keys_load(build_eva: Callable[..., Any]) -> None:
    """A MiniGPT state dict (`visual_encoder.*`, `ln_vision.*`, other components' keys) maps onto the encoder."""
    encoder = build_eva(ln_vision=True)
    torch.manual_seed(6)
    own = {k: torch.randn(v.shape) for k, v in encoder.state_dict().items()}
    mapped = encoder.adapt_state_dict({**own, "llama_proj.weight": torch.zeros(2, 2)})
    assert set(mapped) == set(own) and all(torch.equal(mapped[k], own[k]) for k in own)
