"""Honeybee's D-Abstractor (`honeybee/projectors/dabs.py`, upstream-systems.md §2.2).

Deformable-attention decoder layers over the visual feature map, reusing transformers'
`DeformableDetrDecoder` (its layers and its weight initialisation; `disable_custom_kernels` keeps the
pure-PyTorch path, no kernel is written here):

* `input_proj[level]`: Linear(C → d_model) per level, Identity when the widths agree; `level_emb`
  (1, n_lvls, 1, d_model) only with several levels (the encoder's `feature_levels`).
* queries (`pooled_v_target`): "query" (Honeybee's default) — target = learned `query` embedding,
  query position = the visual map average-pooled to √M × √M; "tgt" — the two swapped; "none" —
  one learned embedding of 2·d_model split into position and target.
* `reference_points`: a uniform grid (linspace(0.5, H − 0.5, √M) / H, as (x, y)), learnable.
* `output_proj`: Linear(d_model → D_llm) when they differ.

It runs in fp32 inside bf16 training (`compute_dtype`), as Honeybee's casts and
`AbstractorTypeConvertCallback` make it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from mmcore_plugin_c_abstractor.base import HoneybeeProjector, HoneybeeProjectorConfig
from pydantic import Field
from torch import nn

from mmcore.kinds import BuildContext, ComponentConfig, Features

__all__ = ["DAbstractor", "DAbstractorConfig"]


class DAbstractorConfig(HoneybeeProjectorConfig):
    # d-abs.yaml: d_model 1024 (hidden_size), 6 decoder layers, M = 144; DeformableDetrConfig defaults for
    # the rest: 8 heads, ffn 1024, 4 sampling points, dropout 0.1, relu.
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
        width = self.input_spec.dim
        with ctx.device:
            self.layers = DeformableDetrDecoder(detr).layers  # built and initialised by transformers
            self.input_proj = nn.ModuleList(nn.Identity() if width == d_model else nn.Linear(width, d_model)
                                            for _ in range(levels))
            self.level_emb = nn.Parameter(torch.empty(1, levels, 1, d_model).normal_()) if levels > 1 else None
            self.pool = nn.AdaptiveAvgPool2d((self.side, self.side))
            size = 2 * d_model if config.pooled_v_target == "none" else d_model
            self.query = nn.Embedding(queries, size) if config.pooled_v_target != "tgt" else None
            self.query_pos = nn.Embedding(queries, d_model) if config.pooled_v_target == "tgt" else None
            self.reference_points = nn.Parameter(self._grid_reference_points())
            self.output_proj = nn.Identity() if d_model == self.output_dim else nn.Linear(d_model, self.output_dim)
        if self.query is not None and not ctx.on_meta:
            nn.init.normal_(self.query.weight, std=config.initializer_range)

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
                "decoder_ffn_dim": 32}

    def forward(self, features: Features) -> torch.Tensor:
        if self.levels > 1:  # each level through prenorm and the input position embedding, as `tokens`
            levels = features.levels or ()
            if len(levels) != self.levels:
                raise ValueError(f"expected {self.levels} feature levels, got {len(levels)}")  # encoder bug
            features = Features(tokens=torch.stack(levels, dim=1), grid=features.grid, pooled=features.pooled)
        return super().forward(features)

    def abstract(self, x: torch.Tensor, features: Features) -> torch.Tensor:
        levels = list(x.unbind(1)) if self.levels > 1 else [x]  # each (B, L, C)
        batch, length, _ = levels[0].shape
        h, w = self.input_spec.grid or (0, 0)
        memory = []
        for index, level in enumerate(levels):
            projected = self.input_proj[index](level)
            if self.level_emb is not None:
                projected = projected + self.level_emb[:, index]
            memory.append(projected)
        value = torch.cat(memory, dim=1)  # (B, n_lvls · L, d)
        visual_map = memory[-1].transpose(1, 2).reshape(batch, -1, h, w)
        pooled = self.pool(visual_map).flatten(2).transpose(1, 2)  # (B, M, d)
        mode = self.config.pooled_v_target
        if mode == "query":
            target, position = self.query.weight.expand(batch, -1, -1), pooled  # type: ignore[union-attr]
        elif mode == "tgt":
            target, position = pooled, self.query_pos.weight.expand(batch, -1, -1)  # type: ignore[union-attr]
        else:
            position, target = self.query.weight.expand(batch, -1, -1).chunk(2, dim=-1)  # type: ignore[union-attr]
        shapes = [(h, w)] * self.levels
        spatial = torch.tensor(shapes, dtype=torch.long, device=x.device)
        starts = torch.arange(0, length * self.levels, length, device=x.device)
        reference = self.reference_points.expand(batch, -1, -1)[:, :, None].expand(-1, -1, self.levels, -1)
        hidden = target
        for layer in self.layers:
            hidden = layer(hidden, object_queries_position_embeddings=position, reference_points=reference,
                           spatial_shapes=spatial, spatial_shapes_list=shapes, level_start_index=starts,
                           encoder_hidden_states=value)
        return self.output_proj(hidden)
