"""Task heads read LLM hidden states at the positions a trigger token selects ([SEG], [LOC]).

The rule that decides which samples feed a head (checked by the data `Processor`, documented in README):
a sample feeds a head when its conversation holds the head's trigger token; its targets under the head's
`target_key` are then the head's, one per trigger, in order. A sample with more triggers than targets
(`trigger-without-target`) or more targets than triggers (`target-without-trigger`, e.g. a reply whose
trigger was cut off by `max_length`) is skipped and counted. A sample without the trigger does not feed
the head, whatever targets it carries (synthetic-shapes `refer` keeps its `boxes` for the text-box metric).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch

from mmcore.errors import MmcoreError
from mmcore.kinds._base import BuildContext, Component, ComponentConfig

__all__ = ["Head", "HeadConfig", "HeadMetric", "HeadOutput", "Overlay", "match_targets", "select_predictions",
           "select_trigger_positions", "targets_by_row"]


class HeadConfig(ComponentConfig):
    trigger_token: str
    # u-LLaVA/LISA read the state *before* the trigger (the one that predicts it): "before".
    select: Literal["before", "at"] = "before"
    loss_weight: float = 1.0


@dataclass
class HeadOutput:
    # Contract: every tensor in `predictions` is per prompt — first dimension K, aligned with
    # `predictions["sample_index"]` (K,) — so the core can split and select them without knowing the head.
    predictions: Any
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # already weighted


@dataclass
class Overlay:
    """Something a head predicted (or a reference target), to draw over its image."""

    kind: Literal["mask", "box"]
    value: Any  # mask: (H, W) bool numpy array at the image's size; box: (x1, y1, x2, y2) pixels of the image
    head: str = ""


class HeadMetric(Protocol):
    """A head's metric accumulator (`Head.metrics()`): sums plain numbers, so ranks and batches add up."""

    def update(self, predictions: dict[str, Any], targets: Any) -> None:
        """Predictions of a batch (one per target, in order per row) against its `TargetBatch` mapping."""

    def miss(self, target: Any) -> None:
        """A target the model gave no prediction for (free-running: it never generated the trigger)."""

    def result(self) -> dict[str, float]: ...


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


def targets_by_row(targets: Any, key: str) -> dict[int, list[torch.Tensor]]:
    """A head's `targets` → batch row → that row's `key` targets in order (rows without any left out). Two forms:
    what the data path gives (`Batch.targets`: key → `mmcore.sequence.TargetBatch`, masks cropped to their own
    size), or one dict per batch row (`{"masks": [(H, W) array, ...]}`: hand-built batches, tests)."""
    import numpy as np

    if isinstance(targets, Mapping):  # values (K, ...), sample_index (K,), sizes (K, 2) or None
        found: Any = targets.get(key)
        rows: dict[int, list[torch.Tensor]] = {}
        for k, row in enumerate([] if found is None else found.sample_index.tolist()):
            value = found.values[k]
            if getattr(found, "sizes", None) is not None:
                height, width = (int(v) for v in found.sizes[k].tolist())
                value = value[:height, :width]
            rows.setdefault(int(row), []).append(value)
        return rows
    return {row: [v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in sample[key]]
            for row, sample in enumerate(targets) if sample and sample.get(key) is not None}


def match_targets(targets: Any, key: str, prompt_rows: torch.Tensor, head: str,
                  trigger: str) -> list[torch.Tensor] | None:
    """The target of each prompt, in prompt order — the j-th trigger of a row ↔ its j-th target (`prompt_rows`
    (K,) holds each prompt's batch row); None when `targets` is None (inference: no loss). Every row with prompts
    must have exactly as many targets (the data path skips and counts samples where they differ): a mismatch here
    is a one-line error naming the row, never a silently dropped loss."""
    if targets is None:
        return None
    by_row = targets_by_row(targets, key)
    rows = prompt_rows.tolist()
    for row in dict.fromkeys(rows):
        triggers, have = rows.count(row), len(by_row.get(row, []))
        if triggers != have:
            raise MmcoreError(f"head '{head}': batch row {row} has {triggers} '{trigger}' trigger(s) but {have} "
                              f"'{key}' target(s); each trigger needs exactly one target, in order (the data "
                              f"path skips samples where they differ)")
    cursor: dict[int, int] = {}
    matched = []
    for row in rows:
        matched.append(by_row[row][cursor.get(row, 0)])
        cursor[row] = cursor.get(row, 0) + 1
    return matched


def select_predictions(predictions: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The predictions of the prompts `keep` selects ((K,) bool or indices), per the HeadOutput contract."""
    count = int(predictions["sample_index"].numel())
    return {k: v[keep.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == count else v
            for k, v in predictions.items()}


class Head(Component):
    """Base head. Assembly registers `trigger_token` with the LLM and passes `ctx.llm_hidden_size`."""

    kind: ClassVar[str] = "head"
    Config: ClassVar[type[ComponentConfig]] = HeadConfig
    target_key: ClassVar[str | None] = None  # the Sample.targets key it consumes, one per trigger ("masks")

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
                targets: Mapping[str, Any] | None) -> HeadOutput:
        """hidden (K, D) at the selected positions, sample_index (K,), targets (`Batch.targets`: key →
        `TargetBatch`, or None at inference) → predictions and losses."""

    def metrics(self) -> HeadMetric | None:
        """A fresh metric accumulator for evaluation, or None when the head has no metric."""
        return None

    def overlays(self, predictions: dict[str, Any]) -> list[Overlay]:
        """What to draw for the predictions of ONE sample (`split` of a batch's), in trigger order."""
        return []

    def split(self, predictions: dict[str, Any], batch_size: int) -> list[dict[str, Any]]:
        """A batch's predictions → one dict per batch row (its prompts in order)."""
        rows = predictions["sample_index"]
        return [select_predictions(predictions, rows == row) for row in range(batch_size)]
