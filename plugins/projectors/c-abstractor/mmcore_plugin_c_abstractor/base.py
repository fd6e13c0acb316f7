"""What Honeybee's projectors share (`honeybee/projectors/projectors.py::Projector`, upstream-systems.md §2.2).

forward: `x = prenorm(x)`; `x = x + pos_emb`; `x = _forward(x)`; append `eos_tokens`. Parameter names
(`pos_emb`, `prenorm`, `eos_tokens`) are Honeybee's, so `abstractor.*` checkpoint keys load as they are.
The D-Abstractor distribution builds on this class too.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, ComponentConfig, Features, Projector

__all__ = ["HoneybeeProjector", "HoneybeeProjectorConfig", "build_mlp"]


def build_mlp(depth: int, in_dim: int, out_dim: int, device: Any = None) -> nn.Sequential:
    """Honeybee `build_mlp`: Linear(in, out), then [SiLU, Linear(out, out)] × (depth − 1) — SiLU, not
    LLaVA's GELU."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, device=device)]
    for _ in range(depth - 1):
        layers += [nn.SiLU(), nn.Linear(out_dim, out_dim, device=device)]
    return nn.Sequential(*layers)


class HoneybeeProjectorConfig(ComponentConfig):
    num_queries: int = Field(144, ge=1)  # Honeybee num_query_tokens (M); a perfect square
    hidden_size: int = Field(1024, ge=1)  # the abstractor's own width
    pos_emb: bool = True  # learned position embedding over the input tokens (trunc-normal, std 0.02)
    prenorm: bool = False  # timm LayerNorm over the encoder width before everything
    num_eos_tokens: int = Field(0, ge=0)  # learned tokens appended after the visual tokens
    initializer_range: float = 0.02

    @field_validator("num_queries")
    @classmethod
    def _square(cls, value: int) -> int:
        side = math.isqrt(value)
        if side * side != value:
            below, above = side * side, (side + 1) ** 2
            raise ValueError(f"{value} is not a perfect square (the output is a √M × √M grid); use {below} or "
                             f"{above}")
        return value


class HoneybeeProjector(Projector):
    """Base of the C- and D-Abstractor: prenorm, input position embedding, eos tokens."""

    requires_grid = True
    pos_emb: nn.Parameter | None
    eos_tokens: nn.Parameter | None

    def __init__(self, config: HoneybeeProjectorConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        grid = self.input_spec.grid
        if self.requires_grid and (grid is None or grid[0] != grid[1]):
            raise MmcoreError(f"{type(self).__name__} needs square grid-shaped features; the encoder reports "
                              f"grid {grid} (for clip: select_feature = \"patch\" drops CLS)")
        self.side = math.isqrt(config.num_queries)
        width, device = self.input_spec.dim, ctx.device
        self.prenorm = self._layer_norm(width, device) if config.prenorm else None
        self.pos_emb = None
        if config.pos_emb:
            self.pos_emb = nn.Parameter(torch.zeros(1, self.input_spec.num_tokens, width, device=device))
            nn.init.trunc_normal_(self.pos_emb, mean=0.0, std=0.02)
        self.eos_tokens = None
        if config.num_eos_tokens:
            self.eos_tokens = nn.Parameter(torch.zeros(1, config.num_eos_tokens, self.output_dim, device=device))
            nn.init.trunc_normal_(self.eos_tokens, mean=0.0, std=config.initializer_range)

    @staticmethod
    def _layer_norm(width: int, device: Any) -> nn.Module:
        from timm.layers import LayerNorm

        return LayerNorm(width, device=device)

    @property
    def num_tokens(self) -> int:
        return int(self.config.num_queries + self.config.num_eos_tokens)

    def forward(self, features: Features) -> torch.Tensor:
        x = features.tokens  # (B, L, C)
        if self.prenorm is not None:
            x = self.prenorm(x)
        if self.pos_emb is not None:
            x = x + self.pos_emb
        x = self.abstract(x, features)  # (B, M, D_llm)
        if self.eos_tokens is not None:
            x = torch.cat([x, self.eos_tokens.expand(x.shape[0], -1, -1)], dim=1)
        return x

    @abstractmethod
    def abstract(self, x: torch.Tensor, features: Features) -> torch.Tensor:
        """Honeybee's `_forward`: (B, L, C) after prenorm and position embedding → (B, M, D_llm)."""

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Honeybee checkpoints: keys under `abstractor.`; an old `pos_emb` with one extra (CLS) slot
        loses it, as Honeybee's `_load_from_state_dict` does."""
        if any(k.startswith("abstractor.") for k in state):
            state = {k.removeprefix("abstractor."): v for k, v in state.items() if k.startswith("abstractor.")}
        pos = state.get("pos_emb")
        if pos is not None and self.pos_emb is not None and pos.shape[1] == self.pos_emb.shape[1] + 1:
            state = {**state, "pos_emb": pos[:, 1:]}
        return super().adapt_state_dict(state)
