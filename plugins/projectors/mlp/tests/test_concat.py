"""concat-linear is MiniGPT-v2's `view(B, N / 4, 4C)` + `llama_proj` (minigpt4/models/minigpt_v2.py::encode_img)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmcore_plugin_mlp.concat import ConcatLinearConfig, ConcatLinearProjector

from mmcore.kinds import BuildContext, Features, FeatureSpec

CTX = BuildContext(name="vision", upstream=FeatureSpec(dim=8, num_tokens=16, grid=(4, 4)), llm_hidden_size=12)


def test_minigpt_v2_7b_projector_has_23_072_768_parameters() -> None:
    """EVA-ViT-g at 448 (1024 × 1408) into LLaMA-2-7B: Linear(5632, 4096), 256 tokens per image."""
    ctx = BuildContext(name="vision", device=torch.device("meta"), upstream=FeatureSpec(1408, 1024, (32, 32)),
                       llm_hidden_size=4096)
    projector = ConcatLinearProjector(ConcatLinearConfig(merge=4), ctx)
    assert sum(p.numel() for p in projector.parameters()) == 23_072_768
    assert projector.num_tokens == 256 and projector.linear.in_features == 5632


def test_equals_upstream_view_then_linear() -> None:
    """Same weights: output == llama_proj(x.view(B, N / 4, 4C)) exactly, i.e. 1 × 4 row-major strips."""
    torch.manual_seed(0)
    projector = ConcatLinearProjector(ConcatLinearConfig(merge=4), CTX)
    tokens = torch.randn(3, 16, 8)  # a 4 × 4 grid of 8-d tokens
    weight, bias = projector.linear.weight, projector.linear.bias
    expected = F.linear(tokens.view(3, 16 // 4, 8 * 4), weight, bias)
    assert torch.equal(projector(Features(tokens, (4, 4))), expected)
    strip = torch.cat([tokens[0, 4], tokens[0, 5], tokens[0, 6], tokens[0, 7]])  # grid row 1, columns 0..3
    assert torch.allclose(projector(Features(tokens, (4, 4)))[0, 1], F.linear(strip, weight, bias), atol=1e-6)


def test_loads_minigpt_v2_llama_proj_keys() -> None:
    """MiniGPT-v2's `llama_proj.weight` / `.bias`, even among a checkpoint's LoRA keys, load into the Linear."""
    projector = ConcatLinearProjector(ConcatLinearConfig(merge=4), CTX)
    state = {"llama_proj.weight": torch.randn(12, 32), "llama_proj.bias": torch.randn(12),
             "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 12)}
    projector.load_state_dict(projector.adapt_state_dict(state))
    assert torch.equal(projector.linear.weight, state["llama_proj.weight"])


def test_merge_must_divide_the_token_count(tmp_path: Path) -> None:
    """At assemble, a `merge` that does not divide the encoder's tokens is a manifest error naming both numbers."""
    from mmcore.assembly import assemble
    from mmcore.errors import ManifestError
    from mmcore.testing import tiny_manifest

    (tmp_path / "m.toml").write_text(tiny_manifest('type = "concat-linear"\nmerge = 3'))  # CLIP 4 × 4 = 16 tokens
    with pytest.raises(ManifestError, match=r"m\.toml:\d+: \[model\.projectors\.vision\] merge = 3 does not divide "
                                            r"the encoder's 16 tokens"):
        assemble(tmp_path / "m.toml")
    (tmp_path / "ok.toml").write_text(tiny_manifest('type = "concat-linear"\nmerge = 4'))
    assert assemble(tmp_path / "ok.toml").model.tokens_per_item == {"image": 4}
