"""Tiny EVA towers with deterministic weights, shared by the eva plugin's tests.

The upstream oracle (Vision-CAIR/MiniGPT-4 d94738a `minigpt4/models/eva_vit.py`, run outside the repo) built
`VisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.3637,
qkv_bias=True, norm_layer=LayerNorm(eps=1e-6), use_mean_pooling=False)` and loaded `upstream_state` below; the
tests pin its outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

TINY_TOWER = {"img_size": 56, "embed_dim": 64, "depth": 2, "num_heads": 4}  # eva_vit_g's structure, narrow


def upstream_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The oracle's weights: N(0, 0.1²) from generator seed 0, drawn in sorted key order."""
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randn(shapes[k], generator=generator) * 0.1 for k in sorted(shapes)}


@pytest.fixture
def pixels() -> torch.Tensor:
    """The oracle's input: (2, 3, 56, 56) from generator seed 1."""
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def build_eva() -> Callable[..., Any]:
    """Build an `eva-vit` encoder from table keys (default: the tiny eva_vit_g tower), on `device`."""
    from mmcore_plugin_eva.encoder import EvaConfig, EvaEncoder

    from mmcore.kinds import BuildContext

    def build(device: str = "cpu", **options: Any) -> EvaEncoder:
        options = {"config": TINY_TOWER, "precision": "fp32", **options}
        return EvaEncoder(EvaConfig.model_validate(options), BuildContext(name="vision", device=torch.device(device)))

    return build


@pytest.fixture
def tiny_eva(build_eva: Callable[..., Any]) -> Callable[..., Any]:
    """A tiny eva_vit_g tower holding the oracle's weights (loaded through `adapt_state_dict`)."""

    def build(**options: Any) -> Any:
        encoder = build_eva(**options).eval()
        tower = {k: tuple(v.shape) for k, v in encoder.visual_encoder.state_dict().items()}
        encoder.load_state_dict(encoder.adapt_state_dict(upstream_state(tower)))
        return encoder

    return build


MANIFEST = """
[model.llm]
type = "hf-causal-lm"
tokenizer = "byte-level"

[model.llm.config]
model_type = "llama"
vocab_size = 260
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 1
num_attention_heads = 4
max_position_embeddings = 256

[model.encoders.vision]
type = "eva-vit"
{encoder}

[model.projectors.vision]
{projector}
"""


@pytest.fixture
def eva_manifest(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a manifest: a tiny random Llama (byte-level tokenizer), `eva-vit` with the `encoder` keys and the
    `projector` table body; returns its path."""

    def write(encoder: str, projector: str = 'type = "linear"') -> Path:
        path = tmp_path / "m.toml"
        path.write_text(MANIFEST.format(encoder=encoder, projector=projector))
        return path

    return write
