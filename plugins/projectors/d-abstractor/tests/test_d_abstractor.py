"""D-Abstractor and resampler: transformers' deformable layers, grid reference points, query modes,
multi-level features, fp32 inside bf16, and a tiny model that trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmcore_plugin_d_abstractor.abstractor import DAbstractor, DAbstractorConfig
from mmcore_plugin_d_abstractor.resampler import Resampler, ResamplerConfig

from mmcore.kinds import BuildContext, Features, FeatureSpec


def _build(levels: int = 1, **options: object) -> DAbstractor:
    spec = FeatureSpec(dim=8, num_tokens=16, grid=(4, 4), num_levels=levels)
    config = DAbstractorConfig.model_validate({"hidden_size": 16, "decoder_layers": 2, "decoder_attention_heads": 2,
                                               "decoder_ffn_dim": 32, "num_queries": 4, **options})
    return DAbstractor(config, BuildContext(name="vision", upstream=spec, llm_hidden_size=12))


def test_deformable_layers_from_transformers_with_their_init() -> None:
    """Layers are transformers' DeformableDetrDecoderLayer, initialised by transformers (zero sampling-offset
    weights, zero attention weights)."""
    from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrDecoderLayer

    model = _build()
    assert all(isinstance(layer, DeformableDetrDecoderLayer) for layer in model.layers) and len(model.layers) == 2
    attention = model.layers[0].encoder_attn
    assert attention.n_points == 4 and attention.n_levels == 1
    assert float(attention.sampling_offsets.weight.detach().abs().sum()) == 0.0
    assert float(attention.attention_weights.weight.detach().abs().sum()) == 0.0


def test_reference_points_start_on_a_uniform_grid_and_learn() -> None:
    """√M × √M cell centres of the 4 × 4 map, as (x, y), learnable."""
    model = _build()
    expected = torch.tensor([[0.125, 0.125], [0.875, 0.125], [0.125, 0.875], [0.875, 0.875]])
    assert torch.allclose(model.reference_points[0], expected) and model.reference_points.requires_grad
    features = Features(tokens=torch.randn(2, 16, 8), grid=(4, 4))
    model(features).sum().backward()
    assert model.reference_points.grad is not None and float(model.reference_points.grad.abs().sum()) > 0


@pytest.mark.parametrize("mode", ["query", "tgt", "none"])
def test_query_modes(mode: str) -> None:
    """Every pooled_v_target mode gives (B, M, D_llm) from one `query_position_embeddings` (2·d_model in
    "none")."""
    model = _build(pooled_v_target=mode)
    out = model(Features(tokens=torch.randn(3, 16, 8), grid=(4, 4)))
    assert out.shape == (3, 4, 12)
    assert model.query_position_embeddings.weight.shape == (4, 32 if mode == "none" else 16)


def test_v_pos_emb_and_eos_tokens_are_d_model_wide_and_eos_pass_output_proj() -> None:
    """v_pos_emb (1, L, d_model) replaces the encoder-wide pos_emb; eos tokens are d_model wide and leave
    through output_proj (dabs.py:67-71, 359-364)."""
    model = _build(num_eos_tokens=2).eval()
    assert model.v_pos_emb is not None and model.v_pos_emb.shape == (1, 16, 16)
    assert model.eos_tokens is not None and model.eos_tokens.shape == (1, 2, 16)
    assert "pos_emb" not in model.state_dict() and model.num_tokens == 6
    out = model(Features(tokens=torch.randn(3, 16, 8), grid=(4, 4)))
    assert out.shape == (3, 6, 12)
    assert torch.allclose(out[:, 4:], model.output_proj(model.eos_tokens).expand(3, -1, -1))
    assert _build(pos_emb=False).v_pos_emb is None


def test_memory_is_input_proj_then_v_pos_emb_then_level_emb() -> None:
    """The decoder attends to input_proj(level) + v_pos_emb + level_emb[level], levels concatenated
    (Honeybee `_process_v_features`, dabs.py:249-270)."""
    model = _build(levels=2).eval()
    seen: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, torch.Tensor]) -> None:
        seen["memory"] = kwargs["encoder_hidden_states"]

    model.layers[0].encoder_attn.register_forward_pre_hook(keep, with_kwargs=True)
    levels = (torch.randn(2, 16, 8), torch.randn(2, 16, 8))
    model(Features(tokens=torch.randn(2, 16, 8), grid=(4, 4), levels=levels))
    assert model.v_pos_emb is not None and model.level_emb is not None
    expected = torch.cat([model.input_proj[i](level) + model.v_pos_emb + model.level_emb[:, i]
                          for i, level in enumerate(levels)], dim=1)
    assert torch.allclose(seen["memory"], expected)


def test_multi_level_features() -> None:
    """Several encoder layers become levels with a level embedding; the encoder provides them."""
    model = _build(levels=2)
    assert model.level_emb is not None and model.layers[0].encoder_attn.n_levels == 2
    levels = (torch.randn(2, 16, 8), torch.randn(2, 16, 8))
    features = Features(tokens=torch.randn(2, 16, 8), grid=(4, 4), levels=levels)
    assert model(features).shape == (2, 4, 12)


def test_fp32_inside_bf16_autocast() -> None:
    """Under bf16 autocast the model runs the D-Abstractor with autocast off, in fp32; its output joins
    the LLM's dtype later."""
    from mmcore.model import run_in_policy

    model = _build()
    seen: list[torch.dtype] = []
    model.layers[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    features = Features(tokens=torch.randn(2, 16, 8, dtype=torch.bfloat16), grid=(4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run_in_policy(model, features)
    assert DAbstractor.compute_dtype == torch.float32 and seen == [torch.float32] and out.dtype == torch.float32


def test_resampler_takes_any_query_count() -> None:
    """The Q-Former-style resampler needs no grid and no square query count."""
    spec = FeatureSpec(dim=8, num_tokens=17, grid=None)
    config = ResamplerConfig(num_queries=5, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model = Resampler(config, BuildContext(name="vision", upstream=spec, llm_hidden_size=12))
    assert model(Features(tokens=torch.randn(2, 17, 8))).shape == (2, 5, 12) and model.num_tokens == 5


def _manifest() -> str:
    from mmcore.testing import tiny_manifest

    projector = ('type = "d-abstractor"\nhidden_size = 16\nnum_queries = 4\ndecoder_layers = 1\n'
                 'decoder_attention_heads = 2\ndecoder_ffn_dim = 32')
    return tiny_manifest(projector, encoder="feature_levels = [-2, -1]", extra=TRAIN)


TRAIN = """
[data]
num_workers = 0

[data.datasets.shapes]
type = "synthetic-shapes"
size = 16
image_size = 28
tasks = ["vqa/colour"]

[[stages]]
name = "instruct"
trainable = ["projectors"]
template = "plain"
precision = "bf16"
batch_size = 4
max_steps = 3
lr = 1e-3
"""


def test_tiny_d_abstractor_trains_in_bf16_with_two_levels(tmp_path: Path) -> None:
    """A tiny model with a two-level D-Abstractor trains a bf16 stage; its weights stay fp32 and move."""
    from mmcore.assembly import assemble
    from mmcore.run import Run
    from mmcore.train import train

    (tmp_path / "m.toml").write_text(_manifest())
    Run.create(tmp_path / "run", assemble(tmp_path / "m.toml"))
    trainer = train(tmp_path / "run")
    projector = trainer.model.projectors["vision"]
    assert projector.levels == 2 and projector.reference_points.dtype == torch.float32
    start = _build(levels=2)  # same shapes, fresh init: training moved the learnable grid
    assert not torch.equal(projector.reference_points.detach(), start.reference_points.detach())
