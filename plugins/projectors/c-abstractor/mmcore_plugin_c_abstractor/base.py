"""What Honeybee's projectors share (`honeybee/projectors/projectors.py`, upstream-systems.md §2.2).

Honeybee's `Projector` base (projectors.py:56-103) runs `x = prenorm(x)`; `x += pos_emb`; `x = _forward(x)`;
append `eos_tokens`. Parameter names (`pos_emb`, `prenorm`, `eos_tokens`) are Honeybee's, so `abstractor.*`
checkpoint keys load as they are. The D-Abstractor distribution builds on this class too, but places its
own position embedding and eos tokens (`projector_embeddings = False`), as upstream's `DAbstractor` is no
`Projector` (dabs.py:15).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch import nn

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, ComponentConfig, Features, Projector

__all__ = ["HoneybeeProjector", "HoneybeeProjectorConfig", "build_eos_tokens", "build_mlp", "build_pos_emb"]


def build_mlp(depth: int, in_dim: int, out_dim: int, device: Any = None) -> nn.Sequential:
    """Honeybee `build_mlp`: Linear(in, out), then [SiLU, Linear(out, out)] × (depth − 1) — SiLU, not
    LLaVA's GELU."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, device=device)]
    for _ in range(depth - 1):
        layers += [nn.SiLU(), nn.Linear(out_dim, out_dim, device=device)]
    return nn.Sequential(*layers)


def build_pos_emb(num_tokens: int, width: int, device: Any = None) -> nn.Parameter:
    """Honeybee `build_pos_embeds` (projectors.py:15-25): (1, L, width), trunc-normal with std 0.02."""
    pos_emb = nn.Parameter(torch.zeros(1, num_tokens, width, device=device))
    nn.init.trunc_normal_(pos_emb, mean=0.0, std=0.02)
    return pos_emb


def build_eos_tokens(count: int, width: int, std: float, device: Any = None) -> nn.Parameter:
    """Honeybee `build_eos_tokens` (projectors.py:28-37): (1, E, width), trunc-normal with std
    `initializer_range`."""
    eos_tokens = nn.Parameter(torch.zeros(1, count, width, device=device))
    nn.init.trunc_normal_(eos_tokens, mean=0.0, std=std)
    return eos_tokens


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
    """Base of the C- and D-Abstractor: grid check, prenorm, and (Honeybee's `Projector`) the input position
    embedding and eos tokens around `abstract`."""

    requires_grid = True
    # True: `pos_emb` at the encoder width before `abstract`, `eos_tokens` at the LLM width after it, as
    # Honeybee's `Projector` (projectors.py:69-74, 93-100). False: the subclass builds and places its own and
    # overrides `forward` (the D-Abstractor: `v_pos_emb` and `eos_tokens` at d_model, dabs.py:68-71).
    projector_embeddings: ClassVar[bool] = True
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
        self.pos_emb = self.eos_tokens = None
        if self.projector_embeddings and config.pos_emb:
            self.pos_emb = build_pos_emb(self.input_spec.num_tokens, width, device)
        if self.projector_embeddings and config.num_eos_tokens:
            self.eos_tokens = build_eos_tokens(config.num_eos_tokens, self.output_dim, config.initializer_range,
                                               device)

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
            x = x + self.pos_emb  # Honeybee adds in place (`x += pos_emb`); same values, the input kept
        x = self.abstract(x, features)  # (B, M, D_llm)
        if self.eos_tokens is not None:
            x = torch.cat([x, self.eos_tokens.expand(x.shape[0], -1, -1)], dim=1)
        return x

    def abstract(self, x: torch.Tensor, features: Features) -> torch.Tensor:
        """Honeybee's `_forward`: (B, L, C) after prenorm and position embedding → (B, M, D_llm). Every
        subclass that keeps the base `forward` implements it (upstream raises NotImplementedError too,
        projectors.py:81-82)."""
        raise NotImplementedError(f"{type(self).__name__} keeps HoneybeeProjector.forward but has no abstract()")

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Honeybee checkpoints: keys under `abstractor.`; an old `pos_emb` with one extra (CLS) slot
        loses it, as Honeybee's `_load_from_state_dict` does (projectors.py:105-112)."""
        if any(k.startswith("abstractor.") for k in state):
            state = {k.removeprefix("abstractor."): v for k, v in state.items() if k.startswith("abstractor.")}
        pos = state.get("pos_emb")
        if pos is not None and self.pos_emb is not None and pos.shape[1] == self.pos_emb.shape[1] + 1:
            state = {**state, "pos_emb": pos[:, 1:]}
        return super().adapt_state_dict(state)
