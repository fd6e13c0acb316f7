"""The mlp distribution's projectors have LLaVA's exact structure."""

from __future__ import annotations

import pytest
import torch
from mmcore_plugin_mlp.projectors import IdentityProjector, LinearProjector, MlpConfig, MlpProjector
from torch import nn

from mmcore.kinds import BuildContext, ComponentConfig, Features, FeatureSpec

CTX = BuildContext(name="vision", upstream=FeatureSpec(dim=16, num_tokens=4, grid=(2, 2)), llm_hidden_size=24)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mlp_is_llava_mlpNx_gelu(depth: int) -> None:
    """mlp{N}x_gelu: Linear(C, D), then [GELU, Linear(D, D)] × (N − 1), at indices 0, 2, 4, …"""
    layers = MlpProjector(MlpConfig(depth=depth), CTX).layers
    kinds = [type(m) for m in layers]
    assert kinds == [nn.Linear] + [nn.GELU, nn.Linear] * (depth - 1)
    assert (layers[0].in_features, layers[0].out_features) == (16, 24)
    assert sorted(MlpProjector(MlpConfig(depth=depth), CTX).state_dict())[:2] == ["layers.0.bias", "layers.0.weight"]


def test_mlp2x_gelu_parameter_count_for_llava_7b() -> None:
    """1024 → 4096 → 4096 has 20,979,712 parameters (LLaVA-1.5-7B's projector)."""
    ctx = BuildContext(name="v", device=torch.device("meta"), upstream=FeatureSpec(1024, 576, (24, 24)),
                       llm_hidden_size=4096)
    assert sum(p.numel() for p in MlpProjector(MlpConfig(depth=2), ctx).parameters()) == 20_979_712


def test_linear_keeps_token_count() -> None:
    """linear maps every token: (B, N, C) → (B, N, D)."""
    out = LinearProjector(ComponentConfig(), CTX)(Features(torch.randn(3, 4, 16), (2, 2)))
    assert out.shape == (3, 4, 24)


def test_identity_needs_equal_widths() -> None:
    """identity refuses an encoder width different from the LLM width."""
    from mmcore.errors import MmcoreError

    with pytest.raises(MmcoreError, match="encoder width \\(16\\) to equal the LLM width \\(24\\)"):
        IdentityProjector(ComponentConfig(), CTX)
