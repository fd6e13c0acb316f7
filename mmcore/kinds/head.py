"""Task heads read LLM hidden states at the positions a trigger token selects ([SEG], [LOC])."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from mmcore.kinds._base import BuildContext, Component, ComponentConfig

__all__ = ["Head", "HeadConfig", "HeadOutput", "select_trigger_positions"]


class HeadConfig(ComponentConfig):
    trigger_token: str
    # u-LLaVA/LISA read the state *before* the trigger (the one that predicts it): "before".
    select: Literal["before", "at"] = "before"
    loss_weight: float = 1.0


@dataclass
class HeadOutput:
    predictions: Any
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # already weighted


def select_trigger_positions(input_ids: torch.Tensor, trigger_id: int, select: str) -> torch.Tensor:
    """(B, L) ids → (B, L) bool mask of the positions whose hidden state the head reads.

    u-LLaVA: `seg_token_mask = cat([input_ids[:, 1:] == SEG, False])`, i.e. the position before.
    """
    is_trigger = input_ids == trigger_id
    if select == "at":
        return is_trigger
    before = torch.zeros_like(is_trigger)
    before[:, :-1] = is_trigger[:, 1:]
    return before


class Head(Component):
    """Base head. Assembly registers `trigger_token` with the LLM and passes `ctx.llm_hidden_size`."""

    kind: ClassVar[str] = "head"
    Config: ClassVar[type[ComponentConfig]] = HeadConfig

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        assert ctx.llm_hidden_size is not None  # Contract: assembly wires the LLM width
        self.llm_hidden_size = ctx.llm_hidden_size
        self.trigger_id: int | None = None  # set by assembly once the token is registered

    @property
    def trigger_token(self) -> str:
        return str(self.config.trigger_token)

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        assert self.trigger_id is not None  # Contract: set at assembly
        return select_trigger_positions(input_ids, self.trigger_id, str(self.config.select))

    @abstractmethod
    def forward(self, hidden: torch.Tensor, sample_index: torch.Tensor, media: dict[str, Any],
                targets: dict[str, Any] | None) -> HeadOutput:
        """hidden (K, D) at the selected positions, sample_index (K,) → predictions and losses."""
