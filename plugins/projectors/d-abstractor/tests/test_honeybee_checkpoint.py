"""D-Abstractor against Honeybee: a state dict with Honeybee's exact names and shapes loads tensor by tensor,
and the forward equals an independent re-derivation of Honeybee's from those tensors alone.

Honeybee's names, derived from `honeybee/projectors/dabs.py` (kakaobrain/honeybee) and transformers 4.38.1
(Honeybee's pin), `modeling_deformable_detr.py`. `HoneybeeForConditionalGeneration.abstractor`
(modeling_honeybee.py:119) puts every key under `abstractor.`:

* `layers.{i}.` (dabs.py:28-30: `DeformableDetrDecoderLayer` × decoder_layers; 4.38.1 :953-979):
  `self_attn.{q,k,v,out}_proj` (d, d) (`DeformableDetrMultiheadAttention`, :777-780), `self_attn_layer_norm`,
  `encoder_attn.sampling_offsets` (heads·levels·points·2, d), `encoder_attn.attention_weights`
  (heads·levels·points, d), `encoder_attn.value_proj` / `output_proj` (d, d) (:644-647),
  `encoder_attn_layer_norm`, `fc1` (ffn, d), `fc2` (d, ffn), `final_layer_norm`; Linear and LayerNorm each
  with `weight` and `bias`.
* `input_proj.{level}` (d, C) only when C ≠ d (dabs.py:33-42); `level_emb` (1, levels, 1, d) only with
  several levels (dabs.py:45-50).
* `query_position_embeddings.weight` (M, d), or (M, 2·d) when pooled_v_target is "none" (dabs.py:53-59).
* `reference_points` (1, M, 2) (dabs.py:61-65, 79-106: a (1, M, 1, 2) grid squeezed).
* `eos_tokens` (1, E, d) when E > 0 (dabs.py:68), `v_pos_emb` (1, L, d) when pos_emb (dabs.py:71).
* `output_proj` (D, d) only when D ≠ d (dabs.py:74-77).
* Nothing else: 4.38.1's `DeformableDetrDecoder.__init__` (:1328-1340) adds no parameter (`bbox_embed` and
  `class_embed` are None) and the `downsampler` pool has none.

transformers ≥ 5 renamed `self_attn.out_proj` → `self_attn.o_proj` and `fc1` / `fc2` → `mlp.fc1` / `mlp.fc2`
(its conversion_mapping.py, "deformable_detr"), which `DAbstractor.adapt_state_dict` maps.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mmcore_plugin_d_abstractor.abstractor import DAbstractor, DAbstractorConfig

from mmcore.kinds import BuildContext, Features, FeatureSpec

ENCODER, D_MODEL, LLM, HEADS, POINTS, FFN, LAYERS, QUERIES, GRID = 6, 8, 10, 2, 2, 12, 2, 4, 4


def honeybee_shapes(mode: str = "query", levels: int = 1, eos: int = 2, encoder: int = ENCODER,
                    llm: int = LLM) -> dict[str, tuple[int, ...]]:
    """Every key (without `abstractor.`) and shape of a Honeybee D-Abstractor, as derived in the module
    docstring."""
    d, tokens = D_MODEL, GRID * GRID
    shapes: dict[str, tuple[int, ...]] = {}
    linears = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (d, d), "self_attn.v_proj": (d, d),
               "self_attn.out_proj": (d, d), "encoder_attn.sampling_offsets": (HEADS * levels * POINTS * 2, d),
               "encoder_attn.attention_weights": (HEADS * levels * POINTS, d), "encoder_attn.value_proj": (d, d),
               "encoder_attn.output_proj": (d, d), "fc1": (FFN, d), "fc2": (d, FFN)}
    for i in range(LAYERS):
        for name, (out, inp) in linears.items():
            shapes[f"layers.{i}.{name}.weight"], shapes[f"layers.{i}.{name}.bias"] = (out, inp), (out,)
        for norm in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"):
            shapes[f"layers.{i}.{norm}.weight"] = shapes[f"layers.{i}.{norm}.bias"] = (d,)
    if encoder != d:
        for level in range(levels):
            shapes[f"input_proj.{level}.weight"], shapes[f"input_proj.{level}.bias"] = (d, encoder), (d,)
    if levels > 1:
        shapes["level_emb"] = (1, levels, 1, d)
    shapes["query_position_embeddings.weight"] = (QUERIES, 2 * d if mode == "none" else d)
    shapes["reference_points"] = (1, QUERIES, 2)
    if eos:
        shapes["eos_tokens"] = (1, eos, d)
    shapes["v_pos_emb"] = (1, tokens, d)
    if llm != d:
        shapes["output_proj.weight"], shapes["output_proj.bias"] = (llm, d), (llm,)
    return shapes


def honeybee_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Distinct random values (small, so sampling stays near the map); LayerNorm gains near 1."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: 0.3 * torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    for key in state:
        if "layer_norm.weight" in key:
            state[key] += 1.0
    state["reference_points"] = torch.rand(shapes["reference_points"], generator=generator)
    return state


def _build(mode: str = "query", levels: int = 1, eos: int = 2, encoder: int = ENCODER,
           llm: int = LLM) -> DAbstractor:
    spec = FeatureSpec(dim=encoder, num_tokens=GRID * GRID, grid=(GRID, GRID), num_levels=levels)
    config = DAbstractorConfig(num_queries=QUERIES, hidden_size=D_MODEL, decoder_layers=LAYERS,
                               decoder_attention_heads=HEADS, decoder_n_points=POINTS, decoder_ffn_dim=FFN,
                               num_eos_tokens=eos, pooled_v_target=mode)  # type: ignore[arg-type]
    return DAbstractor(config, BuildContext(name="vision", upstream=spec, llm_hidden_size=llm))


def _ours(model: DAbstractor, honeybee_key: str) -> str:
    """Where a Honeybee key lives here: its own name, or the transformers ≥ 5 name."""
    own = model.state_dict()
    if honeybee_key in own:
        return honeybee_key
    return (honeybee_key.replace(".self_attn.out_proj.", ".self_attn.o_proj.")
            .replace(".fc1.", ".mlp.fc1.").replace(".fc2.", ".mlp.fc2."))


@pytest.mark.parametrize(("mode", "levels", "eos", "encoder", "llm"), [
    ("query", 1, 2, ENCODER, LLM), ("tgt", 1, 0, D_MODEL, LLM), ("none", 2, 1, ENCODER, D_MODEL)])
def test_honeybee_checkpoint_loads_every_tensor(mode: str, levels: int, eos: int, encoder: int, llm: int) -> None:
    """Honeybee's `abstractor.*` keys (4.38 layer names) load strictly; each tensor lands at its place."""
    from mmcore.checkpoint import load_into

    model = _build(mode, levels, eos, encoder, llm)
    shapes = honeybee_shapes(mode, levels, eos, encoder, llm)
    state = honeybee_state(shapes)
    checkpoint = {f"abstractor.{k}": v for k, v in state.items()}
    checkpoint["vision_model.vision_model.post_layernorm.weight"] = torch.ones(3)  # the rest is ignored
    checkpoint["language_model.lm_head.weight"] = torch.ones(3, 2)
    load_into(model, model.adapt_state_dict(checkpoint), "honeybee")  # strict: nothing missing or extra
    own = model.state_dict()
    assert len(own) == len(shapes)
    for key, value in state.items():
        assert torch.equal(own[_ours(model, key)], value), key


def honeybee_reference(state: dict[str, torch.Tensor], visual: torch.Tensor, mode: str) -> torch.Tensor:
    """Honeybee's D-Abstractor forward (dabs.py:326-369, one level, eval mode) with transformers 4.38's
    decoder layer, from the Honeybee-named tensors and torch functions only."""
    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"])

    batch, length, _ = visual.shape
    side = math.isqrt(length)
    memory = linear(visual, "input_proj.0") if "input_proj.0.weight" in state else visual
    memory = memory + state["v_pos_emb"]  # after input_proj, d_model wide
    d, head = memory.shape[-1], memory.shape[-1] // HEADS
    learned = state["query_position_embeddings.weight"].expand(batch, -1, -1)
    pooled = F.adaptive_avg_pool2d(memory.transpose(1, 2).reshape(batch, d, side, side), math.isqrt(QUERIES))
    pooled = pooled.flatten(2).transpose(1, 2)
    target, position = {"query": (learned, pooled), "tgt": (pooled, learned),
                        "none": (learned[..., d:], learned[..., :d])}[mode]
    reference = state["reference_points"]  # (1, M, 2) as (x, y)
    hidden = target
    for i in range(LAYERS):
        layer = f"layers.{i}"
        # self-attention: the query position joins queries and keys, not values
        query_key = hidden + position
        q = linear(query_key, f"{layer}.self_attn.q_proj").view(batch, -1, HEADS, head).transpose(1, 2)
        k = linear(query_key, f"{layer}.self_attn.k_proj").view(batch, -1, HEADS, head).transpose(1, 2)
        v = linear(hidden, f"{layer}.self_attn.v_proj").view(batch, -1, HEADS, head).transpose(1, 2)
        attended = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head), -1) @ v).transpose(1, 2)
        hidden = norm(hidden + linear(attended.reshape(batch, -1, d), f"{layer}.self_attn.out_proj"),
                      f"{layer}.self_attn_layer_norm")
        # deformable cross-attention: POINTS bilinear samples per head around the reference point
        query = hidden + position
        offsets = linear(query, f"{layer}.encoder_attn.sampling_offsets").view(batch, -1, HEADS, POINTS, 2)
        weights = torch.softmax(linear(query, f"{layer}.encoder_attn.attention_weights")
                                .view(batch, -1, HEADS, POINTS), -1)
        locations = reference[:, :, None, None, :] + offsets / side  # (B, M, heads, points, (x, y))
        value = linear(memory, f"{layer}.encoder_attn.value_proj").view(batch, side, side, HEADS, head)
        maps = value.permute(0, 3, 4, 1, 2).reshape(batch * HEADS, head, side, side)
        grid = (2 * locations - 1).transpose(1, 2).reshape(batch * HEADS, -1, POINTS, 2)
        sampled = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        mixed = (sampled * weights.transpose(1, 2).reshape(batch * HEADS, 1, -1, POINTS)).sum(-1)
        mixed = mixed.view(batch, d, -1).transpose(1, 2)  # (B, M, d), heads in order
        hidden = norm(hidden + linear(mixed, f"{layer}.encoder_attn.output_proj"), f"{layer}.encoder_attn_layer_norm")
        feed = linear(torch.relu(linear(hidden, f"{layer}.fc1")), f"{layer}.fc2")
        hidden = norm(hidden + feed, f"{layer}.final_layer_norm")
    if "eos_tokens" in state:  # appended before output_proj
        hidden = torch.cat([hidden, state["eos_tokens"].expand(batch, -1, -1)], dim=1)
    return linear(hidden, "output_proj") if "output_proj.weight" in state else hidden


@pytest.mark.parametrize("mode", ["query", "tgt", "none"])
def test_forward_equals_honeybee_re_derivation(mode: str) -> None:
    """With a Honeybee checkpoint loaded, the output equals Honeybee's forward re-derived from its tensors."""
    from mmcore.checkpoint import load_into

    model = _build(mode).eval()
    state = honeybee_state(honeybee_shapes(mode), seed=1)
    load_into(model, model.adapt_state_dict({f"abstractor.{k}": v for k, v in state.items()}), "honeybee")
    visual = torch.randn(3, GRID * GRID, ENCODER, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(Features(tokens=visual, grid=(GRID, GRID)))
        expected = honeybee_reference(state, visual, mode)
    assert ours.shape == (3, QUERIES + 2, LLM)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
