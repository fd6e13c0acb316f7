"""Projectors map encoder `Features` into the LLM, in one of two modes.

* token mode: `forward` returns visual tokens (B, M, D_llm) that the sequence builder splices in
  place of a placeholder; `num_tokens` is M.
* adapter mode (ImageBind-LLM): `forward` returns a condition (B, L, D_llm) that is added inside
  every decoder layer's attention through a zero-initialised, tanh-gated per-head value path; the
  placeholder expands to no tokens.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import nn

from mmcore.kinds._base import BuildContext, Component, ComponentConfig, FeatureSpec
from mmcore.kinds.encoder import Features

__all__ = ["AdapterProjector", "Projector"]


class Projector(Component):
    """Base projector (token mode). Assembly supplies `ctx.upstream` and `ctx.llm_hidden_size`."""

    kind: ClassVar[str] = "projector"
    mode: ClassVar[str] = "tokens"
    requires_grid: ClassVar[bool] = False  # True: the encoder must report a (h, w) grid

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        assert ctx.upstream is not None and ctx.llm_hidden_size is not None  # Contract: assembly wires both
        self.input_spec: FeatureSpec = ctx.upstream
        self.output_dim: int = ctx.llm_hidden_size

    @property
    @abstractmethod
    def num_tokens(self) -> int:
        """Visual tokens per media item that this projector puts into the sequence."""

    @abstractmethod
    def forward(self, features: Features) -> torch.Tensor:
        """Features → (B, num_tokens, D_llm) in token mode, or the adapter condition."""


class AdapterProjector(Projector):
    """Adapter-mode projector: owns one zero-initialised gate per (decoder layer, head).

    ImageBind-LLM (LLaMA-Adapter `llama.py::Attention`): after causal attention,
    `output += gate.tanh() * wv(adapter)` per head, broadcast to every position, then `wo`. With the
    gate at zero the LLM is unchanged at the start of training. The frozen base `wv` projects the
    condition (a LoRA on `wv` is not applied to it).
    """

    mode: ClassVar[str] = "adapter"

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        sites = ctx.llm_layout
        assert sites, "Contract: assembly passes the LLM's attention sites to adapter projectors"
        self.gates = nn.Parameter(torch.zeros(len(sites), sites[0].num_heads))  # (layers, heads)

    @property
    def num_tokens(self) -> int:
        return 0

    def condition_for_layer(self, condition: torch.Tensor, layer: int) -> torch.Tensor:
        """The condition seen by `layer` (ImageBind-LLM adds a per-layer prefix query here)."""
        return condition
