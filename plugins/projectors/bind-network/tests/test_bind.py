"""bind-network: ImageBind-LLM's layout and counts (next-systems.md §2.3), its per-layer conditions, its errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mmcore_plugin_bind_network.bind import BindNetwork, BindNetworkConfig

from mmcore.errors import MmcoreError
from mmcore.kinds import AttentionSite, BuildContext, FeatureSpec


def _build(layers: int = 32, dim: int = 4096, device: str = "meta", **options: Any) -> BindNetwork:
    sites: Any = [AttentionSite(None, None, 32, 32, dim // 32) for _ in range(layers)]  # type: ignore[arg-type]
    ctx = BuildContext(name="bind", device=torch.device(device), upstream=FeatureSpec(1024, 1, pooled_dim=1024),
                       llm_hidden_size=dim, llm_layout=sites)
    return BindNetwork(BindNetworkConfig.model_validate(options), ctx)


def test_7b_counts() -> None:
    """At 7B: bind network 608,190,464, prefix_query 32 × 4096, gates 32 layers × 32 heads (LLaMA_adapter)."""
    bind = _build()
    body = sum(p.numel() for n, p in bind.named_parameters() if n not in ("gates", "prefix_query.weight"))
    assert body == 608_190_464 and bind.prefix_query.weight.shape == (32, 4096) and bind.gates.shape == (32, 32)
    assert bind.f1_1.bias is None and type(bind.norm_1).__name__ == "RMSNorm" and bind.norm_1.eps == 1e-6


def test_legacy_bridge_is_layernorm_with_biases() -> None:
    """legacy_bridge: nn.LayerNorm and f1/f2/f3 with bias (upstream builds all three with bias=bridge_bias)."""
    bind = _build(legacy_bridge=True)
    assert isinstance(bind.norm_2, torch.nn.LayerNorm)
    assert all(getattr(bind, f"f{i}_3").bias is not None for i in (1, 2, 3))


def test_only_the_last_query_layers_get_the_condition() -> None:
    """query_layer N: earlier layers see nothing, layer L − N + i sees condition + prefix_query[i]."""
    bind = _build(layers=4, dim=64, device="cpu", query_layer=2)
    condition = torch.randn(3, 1, 64)
    assert bind.condition_for_layer(condition, 1) is None
    torch.testing.assert_close(bind.condition_for_layer(condition, 3), condition + bind.prefix_query.weight[1])
    with pytest.raises(MmcoreError, match="exceeds the LLM's 4 layers"):
        _build(layers=4, dim=64, device="cpu", query_layer=5)
