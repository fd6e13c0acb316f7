"""`resampler`: the learned-query baseline Honeybee compares its abstractors against.

Honeybee's `resampler` (mPLUG-Owl's visual abstractor, upstream-systems.md §2.2: hidden 1024, 6 layers,
16 heads, intermediate 4096, 64 queries) is a Q-Former-style stack: M learned queries that
self-attend and cross-attend to every visual token. Here the stack is transformers' BLIP-2 Q-Former
(`Blip2QFormerModel`, cross-attention in every layer) — the same structure, not mPLUG-Owl's exact
module or keys. Learned queries are unaware of where tokens sit; that is the locality Honeybee's
abstractors add. A readout Linear maps the Q-Former width to the LLM.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from mmcore_plugin_c_abstractor.base import HoneybeeProjector, HoneybeeProjectorConfig
from pydantic import Field
from torch import nn

from mmcore.kinds import BuildContext, ComponentConfig, Features

__all__ = ["Resampler", "ResamplerConfig"]


class ResamplerConfig(HoneybeeProjectorConfig):
    num_queries: int = Field(64, ge=1)  # any count: the queries do not form a grid
    num_layers: int = Field(6, ge=1)
    num_heads: int = Field(16, ge=1)
    intermediate_size: int = Field(4096, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)

    @classmethod
    def _square(cls, value: int) -> int:  # overrides the abstractors' perfect-square rule
        return value


class Resampler(HoneybeeProjector):
    Config: ClassVar[type[ComponentConfig]] = ResamplerConfig
    requires_grid: ClassVar[bool] = False

    def __init__(self, config: ResamplerConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        if config.hidden_size % config.num_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not divisible by num_heads {config.num_heads}")
        qformer = Blip2QFormerConfig(hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                                     num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
                                     hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
                                     cross_attention_frequency=1, encoder_hidden_size=self.input_spec.dim,
                                     initializer_range=config.initializer_range)
        with ctx.device:
            self.queries = nn.Parameter(torch.zeros(1, config.num_queries, config.hidden_size))
            self.qformer = Blip2QFormerModel(qformer)
            self.readout = nn.Linear(config.hidden_size, self.output_dim)
        if not ctx.on_meta:
            nn.init.trunc_normal_(self.queries, std=config.initializer_range)

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"num_queries": 3, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}

    def abstract(self, x: torch.Tensor, features: Features) -> torch.Tensor:
        queries = self.queries.expand(x.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=x).last_hidden_state  # (B, M, hidden)
        return self.readout(out)
