"""Honeybee's D-Abstractor (`honeybee/projectors/dabs.py`, upstream-systems.md §2.2).

Deformable-attention decoder layers over the visual feature map, reusing transformers'
`DeformableDetrDecoder` (its layers and its weight initialisation; `disable_custom_kernels` keeps the
pure-PyTorch path, no kernel is written here). Upstream's `DAbstractor` subclasses the decoder, not
Honeybee's `Projector` (dabs.py:15), so its forward differs from the C-Abstractor's (dabs.py:326-369):

    (B, L, C) → input_proj → + v_pos_emb (d_model wide) [+ level_emb] → memory (B, n_lvls · L, d_model)
    queries (pooled memory, learned embedding) → decoder layers → (B, M, d_model)
    → append eos_tokens (d_model wide) → output_proj → (B, M + E, D_llm)

* `input_proj[level]`: Linear(C → d_model) per level, Identity when the widths agree; `level_emb`
  (1, n_lvls, 1, d_model) only with several levels (the encoder's `feature_levels`).
* queries (`pooled_v_target`), all from `query_position_embeddings` (Honeybee's name whatever the mode):
  "query" (Honeybee's default) — target = the learned embedding, query position = the memory
  average-pooled to √M × √M; "tgt" — the two swapped; "none" — one learned embedding of 2·d_model split
  into (position, target).
* `reference_points`: a uniform grid (linspace(0.5, H − 0.5, √M) / H, as (x, y)), learnable.
* `output_proj`: Linear(d_model → D_llm) when they differ.

Module names are Honeybee's; `adapt_state_dict` maps the two decoder-layer names transformers changed
after 4.38. It runs in fp32 inside bf16 training (`compute_dtype`), as Honeybee's casts and
`AbstractorTypeConvertCallback` make it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import torch
from mmcore_plugin_c_abstractor.base import (
    HoneybeeProjector,
    HoneybeeProjectorConfig,
    build_eos_tokens,
    build_pos_emb,
)
from pydantic import Field
from torch import nn

from mmcore.kinds import BuildContext, ComponentConfig, Features

__all__ = ["DAbstractor", "DAbstractorConfig"]

# DeformableDetrDecoderLayer names of transformers 4.38 (Honeybee's pin) and of transformers ≥ 5, as
# transformers' own conversion_mapping.py renames them for "deformable_detr": `self_attn.out_proj` →
# `self_attn.o_proj` (4.38.1 modeling_deformable_detr.py:780), `fc1` / `fc2` → `mlp.fc1` / `mlp.fc2` (:977-978).
LAYER_RENAMES = ((r"^(layers\.\d+\.self_attn)\.out_proj\.", r"\1.o_proj."),
                 (r"^(layers\.\d+)\.(fc[12])\.", r"\1.mlp.\2."))


class DAbstractorConfig(HoneybeeProjectorConfig):
    # d-abs.yaml: d_model 1024 (hidden_size), 6 decoder layers, M = 144; DeformableDetrConfig defaults for
    # the rest: 8 heads, ffn 1024, 4 sampling points, dropout 0.1, relu.
    # `pos_emb` switches `v_pos_emb` (d_model wide); `prenorm`, absent from Honeybee's D-Abstractor, is an
    # mmcore extension (off by default): a LayerNorm over the encoder width before `input_proj`.
    decoder_layers: int = Field(6, ge=1)
    decoder_attention_heads: int = Field(8, ge=1)
    decoder_ffn_dim: int = Field(1024, ge=1)
    decoder_n_points: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    activation_function: Literal["relu", "gelu", "silu"] = "relu"
    pooled_v_target: Literal["query", "tgt", "none"] = "query"


class DAbstractor(HoneybeeProjector):
    Config: ClassVar[type[ComponentConfig]] = DAbstractorConfig
    compute_dtype: ClassVar[torch.dtype | None] = torch.float32  # Honeybee: "runs in fp32 only"
    projector_embeddings: ClassVar[bool] = False  # its own v_pos_emb and eos_tokens, at d_model
    v_pos_emb: nn.Parameter | None

    def __init__(self, config: DAbstractorConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        from transformers import DeformableDetrConfig
        from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrDecoder

        d_model, queries, levels = config.hidden_size, config.num_queries, self.input_spec.num_levels
        if d_model % config.decoder_attention_heads:
            raise ValueError(f"hidden_size {d_model} is not divisible by decoder_attention_heads "
                             f"{config.decoder_attention_heads}")
        self.levels = levels
        detr = DeformableDetrConfig(d_model=d_model, decoder_layers=config.decoder_layers,
                                    decoder_attention_heads=config.decoder_attention_heads,
                                    decoder_ffn_dim=config.decoder_ffn_dim, decoder_n_points=config.decoder_n_points,
                                    dropout=config.dropout, activation_function=config.activation_function,
                                    num_feature_levels=levels, disable_custom_kernels=True, two_stage=False,
                                    init_std=config.initializer_range)
        width, device = self.input_spec.dim, ctx.device
        with device:
            self.layers = DeformableDetrDecoder(detr).layers  # built and initialised by transformers
            self.input_proj = nn.ModuleList(nn.Identity() if width == d_model else nn.Linear(width, d_model)
                                            for _ in range(levels))  # dabs.py:33-42
            self.level_emb = nn.Parameter(torch.empty(1, levels, 1, d_model).normal_()) if levels > 1 else None
            self.pool = nn.AdaptiveAvgPool2d((self.side, self.side))  # Honeybee's `downsampler`
            size = 2 * d_model if config.pooled_v_target == "none" else d_model  # dabs.py:53-59
            self.query_position_embeddings = nn.Embedding(queries, size)
            self.reference_points = nn.Parameter(self._grid_reference_points())  # (1, M, 2), dabs.py:61-65
            self.output_proj = nn.Identity() if d_model == self.output_dim else nn.Linear(d_model, self.output_dim)
        # dabs.py:67-71: both d_model wide (the C-Abstractor's are encoder- and LLM-wide)
        self.v_pos_emb = build_pos_emb(self.input_spec.num_tokens, d_model, device) if config.pos_emb else None
        if config.num_eos_tokens:
            self.eos_tokens = build_eos_tokens(config.num_eos_tokens, d_model, config.initializer_range, device)
        if not ctx.on_meta:
            nn.init.normal_(self.query_position_embeddings.weight, std=config.initializer_range)

    def _grid_reference_points(self) -> torch.Tensor:
        """Honeybee's manual init: √M × √M points at cell centres of the H × W map, as (x, y) in [0, 1]."""
        h, w = self.input_spec.grid or (0, 0)
        steps = self.side
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, steps), torch.linspace(0.5, w - 0.5, steps),
                                indexing="ij")
        return torch.stack([xs.reshape(-1) / w, ys.reshape(-1) / h], dim=-1)[None]  # (1, M, 2)

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"num_queries": 4, "hidden_size": 16, "decoder_layers": 1, "decoder_attention_heads": 2,
                "decoder_ffn_dim": 32, "num_eos_tokens": 1}

    def forward(self, features: Features) -> torch.Tensor:
        memory = self._memory(features)  # n_lvls × (B, L, d)
        batch = memory[0].shape[0]
        target, position = self._queries(memory[-1])  # each (B, M, d)
        h, w = self.input_spec.grid or (0, 0)
        shapes = [(h, w)] * self.levels
        spatial = torch.tensor(shapes, dtype=torch.long, device=target.device)
        starts = torch.arange(0, h * w * self.levels, h * w, device=target.device)
        # dabs.py:181, 283: valid ratios are 1, so every level sees the same (x, y)
        reference = self.reference_points.expand(batch, -1, -1)[:, :, None].expand(-1, -1, self.levels, -1)
        value = torch.cat(memory, dim=1)  # (B, n_lvls · L, d)
        hidden = target
        for layer in self.layers:
            hidden = layer(hidden, object_queries_position_embeddings=position, reference_points=reference,
                           spatial_shapes=spatial, spatial_shapes_list=shapes, level_start_index=starts,
                           encoder_hidden_states=value)
        if self.eos_tokens is not None:  # dabs.py:359-362: appended at d_model, before output_proj
            hidden = torch.cat([hidden, self.eos_tokens.expand(batch, -1, -1)], dim=1)
        return self.output_proj(hidden)  # (B, M + E, D_llm), dabs.py:364

    def _memory(self, features: Features) -> list[torch.Tensor]:
        """Honeybee `_process_v_features` (dabs.py:249-270): per level input_proj, then `v_pos_emb`, then
        `level_emb`."""
        levels = [features.tokens] if self.levels == 1 else list(features.levels or ())
        if len(levels) != self.levels:
            raise ValueError(f"expected {self.levels} feature levels, got {len(levels)}")  # encoder bug
        memory = []
        for index, level in enumerate(levels):  # each (B, L, C)
            if self.prenorm is not None:
                level = self.prenorm(level)
            level = self.input_proj[index](level)  # (B, L, d)
            if self.v_pos_emb is not None:
                level = level + self.v_pos_emb
            if self.level_emb is not None:
                level = level + self.level_emb[:, index]
            memory.append(level)
        return memory

    def _queries(self, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Honeybee `_make_pooled_queries` (dabs.py:300-324): (target, query position), each (B, M, d).
        Upstream asserts a single level; with several, mmcore pools the last one."""
        batch, _, d_model = visual.shape
        h, w = self.input_spec.grid or (0, 0)
        learned = self.query_position_embeddings.weight.expand(batch, -1, -1)  # (B, M, d or 2d)
        mode = self.config.pooled_v_target
        if mode == "none":
            position, target = learned.split(d_model, dim=-1)
            return target, position
        pooled = self.pool(visual.transpose(1, 2).reshape(batch, d_model, h, w)).flatten(2).transpose(1, 2)
        return (learned, pooled) if mode == "query" else (pooled, learned)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Honeybee checkpoints: `abstractor.*` keys with transformers 4.38's decoder-layer names. A key that
        is not ours is renamed by `LAYER_RENAMES` when that gives one of ours (under a transformers that
        still uses the 4.38 names, nothing is renamed)."""
        state = super().adapt_state_dict(state)
        own = set(self.state_dict())

        def ours(key: str) -> str:
            if key in own:
                return key
            for pattern, replacement in LAYER_RENAMES:
                if (renamed := re.sub(pattern, replacement, key)) in own:
                    return renamed
            return key  # left to the strict load, which names it

        return {ours(key): value for key, value in state.items()}
