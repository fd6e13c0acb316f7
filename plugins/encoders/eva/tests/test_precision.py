"""The frozen tower runs in fp16 / bf16 as MiniGPT-v2 runs it, through the core's dtype policy.

Upstream (`eva_vit.py::convert_weights_to_fp16`) casts the weights and biases of Conv and Linear modules only,
then runs the tower under fp16 autocast (`base_model.py::maybe_autocast`). Pinned values: upstream's tiny tower
(conftest.py) converted that way, under CPU fp16 autocast, run outside the repo.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from mmcore.model import run_in_policy


def _linear_and_conv(module: nn.Module, prefix: str) -> set[str]:
    """Upstream's rule: the weights and biases of every Conv / Linear module."""
    return {f"{prefix}{name}.{p}".lstrip(".") for name, m in module.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) for p, _ in m.named_parameters(recurse=False)}


@pytest.mark.parametrize("model", ["eva_vit_g_448", "eva02_large_patch14_clip_224"])
def test_fp16_storage_is_convert_weights_to_fp16(build_eva: Callable[..., Any], model: str) -> None:
    """Conv/Linear weights and biases are stored in fp16; LayerNorms, pos_embed, cls_token, q/v biases stay fp32."""
    encoder = build_eva("meta", model=model, config={}, ln_vision=True, precision="fp16")
    assert encoder.compute_dtype == torch.float16
    encoder.apply_dtype_policy()
    half = {n for n, p in encoder.named_parameters() if p.dtype == torch.float16}
    assert half == _linear_and_conv(encoder.visual_encoder, "visual_encoder.")
    kept = {n for n, p in encoder.named_parameters() if p.dtype == torch.float32}
    assert {"visual_encoder.pos_embed", "visual_encoder.cls_token", "ln_vision.weight"} <= kept
    assert all(p.dtype in (torch.float16, torch.float32) for p in encoder.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_tower_equals_timm_converted_like_upstream(tiny_eva: Callable[..., Any], pixels: torch.Tensor,
                                                        dtype: torch.dtype) -> None:
    """Under the policy the tower's output is timm's, converted as upstream and run under autocast (max |diff| 0),
    and comes back in fp32."""
    import timm
    from mmcore_plugin_eva.presets import timm_kwargs

    encoder = tiny_eva(select_feature="cls_patch", precision={torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype])
    name, kwargs = timm_kwargs("eva_vit_g", None, encoder.config.config)
    reference = timm.create_model(name, pretrained=False, **kwargs).eval()
    reference.load_state_dict(encoder.visual_encoder.state_dict())
    for module in reference.modules():  # convert_weights_to_fp16, for `dtype`
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.to(dtype)
    encoder.apply_dtype_policy()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        expected = reference.forward_features(pixels)
    with torch.no_grad():
        tokens = run_in_policy(encoder, pixels, "image").tokens
    assert tokens.dtype == torch.float32 and torch.equal(tokens, expected.float())


def test_fp16_tower_matches_upstream(tiny_eva: Callable[..., Any], pixels: torch.Tensor) -> None:
    """fp16 patch tokens are upstream's fp16 tower's within fp16 rounding (oracle, CPU autocast)."""
    encoder = tiny_eva(precision="fp16")
    encoder.apply_dtype_policy()
    with torch.no_grad():
        tokens = run_in_policy(encoder, pixels, "image").tokens
    assert abs(float(tokens.abs().sum()) - 4036.220458984375) < 0.05
    expected = torch.tensor([[-1.4793623685836792, 0.3723103404045105, -0.43892794847488403],
                             [-1.033687710762024, 4.360209941864014, 0.6055957674980164]])
    assert torch.allclose(torch.stack([tokens[0, 0, :3], tokens[1, 15, -3:]]), expected, atol=1e-3)


def test_assembled_model_stores_the_tower_per_policy(eva_manifest: Callable[..., Any]) -> None:
    """An assembled model applies the policy: an fp16 EVA holds fp16 Linear weights and an fp32 pos_embed."""
    from mmcore.assembly import assemble

    path = eva_manifest("config = { img_size = 28, embed_dim = 32, depth = 1, num_heads = 4 }")
    encoder = assemble(path, device="meta").model.encoders["vision"]
    assert encoder.visual_encoder.blocks[0].attn.qkv.weight.dtype == torch.float16
    assert encoder.visual_encoder.pos_embed.dtype == torch.float32
