"""Matching a batch's targets to the head's prompts: the j-th trigger of a sample ↔ its j-th target.

Two forms are accepted:

* one dict per batch row (hand-built batches, tests), `{"masks": [(H, W) array, ...], ...}` (a list, or an
  array / tensor whose first dimension indexes the targets);
* what the core's data path gives (`Batch.targets`: key → `mmcore.sequence.TargetBatch`), tensors with a sample
  index: a mapping `{"masks": T}` where `T.values`
  is (K_t, ...) — masks padded bottom-right to the largest size, with `T.sizes` (K_t, 2) giving each
  mask's own (H, W) — and `T.sample_index` (K_t,) the batch row of each target.

`targets=None` means inference: no loss. Otherwise every row that has prompts must have exactly as many
targets as prompts (the data path skips and counts samples where they differ); a mismatch here is a
one-line error naming the row, never a silently dropped loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mmcore.errors import MmcoreError

__all__ = ["match_targets", "targets_by_row"]


def _as_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def targets_by_row(targets: Any, key: str) -> dict[int, list[torch.Tensor]]:
    """Either form → batch row → that row's `key` targets in order (rows without any left out)."""
    rows: dict[int, list[torch.Tensor]] = {}
    if isinstance(targets, Mapping):
        found = targets.get(key)
        if found is None:
            return rows
        sizes = getattr(found, "sizes", None)
        for i, row in enumerate(found.sample_index.tolist()):
            value = found.values[i]
            if sizes is not None:
                h, w = (int(s) for s in sizes[i].tolist())
                value = value[:h, :w]
            rows.setdefault(int(row), []).append(value)
        return rows
    for row, sample in enumerate(targets):
        values = sample.get(key) if sample else None
        if values is None:
            continue
        rows[row] = [_as_tensor(v) for v in values]
    return rows


def match_targets(targets: Any, key: str, prompt_rows: torch.Tensor, head: str,
                  trigger: str) -> list[torch.Tensor] | None:
    """The target of each prompt, in prompt order (`prompt_rows` (K,) holds each prompt's batch row);
    None when `targets` is None (inference)."""
    if targets is None:
        return None
    by_row = targets_by_row(targets, key)
    cursor: dict[int, int] = {}
    matched = []
    rows = prompt_rows.tolist()
    for row in rows:
        index = cursor.get(row, 0)
        found = by_row.get(row, [])
        if index >= len(found):
            break
        matched.append(found[index])
        cursor[row] = index + 1
    for row in dict.fromkeys(rows):
        triggers, have = rows.count(row), len(by_row.get(row, []))
        if triggers != have:
            raise MmcoreError(f"head '{head}': batch row {row} has {triggers} '{trigger}' trigger(s) but {have} "
                              f"'{key}' target(s); each trigger needs exactly one target, in order (the data "
                              f"path skips samples where they differ)")
    return matched
