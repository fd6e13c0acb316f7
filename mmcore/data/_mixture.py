"""The order in which a stage visits samples: mixtures, epochs, LLaVA's modality-length grouping,
MiniGPT-v2's per-dataset loaders, and each rank's share. The global order depends only on the seed (never on
the world size).

The global order is cut into micro-batches; an optimizer step takes `world × accum` consecutive ones and rank r's
micro-batch m of step s is micro-batch k = (s·accum + m)·world + r. With one batch size they are the order's
consecutive slices; MiniGPT-v2's mixture (`loader_draws`) gives each micro-batch the size of the dataset it was
drawn from. Either way two layouts with the same world × accum see the same samples in every optimizer step.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np

from mmcore.errors import MmcoreError

__all__ = ["PRESETS", "epoch_order", "group_by_modality_length", "loader_draws", "loader_steps", "rank_batches",
           "stage_order"]

Item = tuple[str, int]  # (dataset name, index in it)

# Honeybee finetuning mixture (multidata_wrapper defaults, upstream-systems.md §2.4).
PRESETS: dict[str, dict[str, float]] = {
    "honeybee-finetune": dict(zip(
        ["coyo100m", "vqa", "gqa", "ocrvqa", "vsr", "sqa", "aokvqa", "refcoco", "refcoco+", "refcocog", "vgloc",
         "llava150k", "vicuna40k"],
        [.077, .103, .103, .051, .026, .051, .103, .103, .103, .103, .051, .103, .026], strict=True)),
    "honeybee-pretrain": {"blip": 0.5, "coyo100m": 0.5},
}


def _weighted(sizes: dict[str, int], weights: dict[str, float], draws: int, rng: np.random.Generator) -> list[Item]:
    """Pick a dataset by weight for every draw; walk each dataset through its own permutation."""
    names = [n for n in sizes if weights.get(n, 0) > 0]
    p = np.array([weights[n] for n in names], dtype=float)
    choice = rng.choice(len(names), size=draws, p=p / p.sum())
    perms = {n: rng.permutation(sizes[n]) for n in names}
    cursor = dict.fromkeys(names, 0)
    order = []
    for pick in choice:
        name = names[int(pick)]
        order.append((name, int(perms[name][cursor[name] % sizes[name]])))
        cursor[name] += 1
    return order


def _per_task(sizes: dict[str, int], task_of: Callable[[str, int], str | None], draws: int,
              rng: np.random.Generator) -> list[Item]:
    """Uniform over tasks, then uniform within the task's samples (across datasets)."""
    by_task: dict[str, list[Item]] = {}
    for name, size in sizes.items():
        for index in range(size):
            by_task.setdefault(task_of(name, index) or name, []).append((name, index))
    tasks = sorted(by_task)
    return [by_task[tasks[t]][int(rng.integers(len(by_task[tasks[t]])))]
            for t in rng.integers(len(tasks), size=draws)]


def epoch_order(sizes: dict[str, int], mixture: dict[str, float] | str, seed: int, epoch: int,
                task_of: Callable[[str, int], str | None] | None = None, cap: int | None = None,
                samples_per_epoch: int | None = None) -> list[Item]:
    """One epoch's global order of (dataset, index)."""
    rng = np.random.default_rng([seed, epoch])
    total = sum(sizes.values())
    draws = samples_per_epoch or total
    if isinstance(mixture, dict):
        return _weighted(sizes, mixture, draws, rng)
    if mixture == "uniform":
        return _weighted(sizes, dict.fromkeys(sizes, 1.0), draws, rng)
    if mixture == "per-task":
        assert task_of is not None  # Contract: the trainer passes the datasets' task lookup
        return _per_task(sizes, task_of, draws, rng)
    if mixture == "size-proportional":  # Honeybee "sample-100k": every dataset, at most `cap` samples
        order = [(n, int(i)) for n, s in sizes.items() for i in rng.permutation(s)[: cap or s]]
        return [order[int(i)] for i in rng.permutation(len(order))]
    if mixture in PRESETS:
        weights = PRESETS[mixture]
        missing = sorted(set(weights) - set(sizes))
        if missing:
            raise MmcoreError(f"mixture '{mixture}' weighs datasets {sorted(weights)}; this stage lacks "
                              f"{missing} — name your [data.datasets] tables after them")
        return _weighted(sizes, weights, draws, rng)
    raise MmcoreError(f"unknown mixture '{mixture}'")


def group_by_modality_length(order: list[Item], lengths: list[int], megabatch: int, seed: int) -> list[Item]:
    """LLaVA `get_modality_length_grouped_indices`: image (length > 0) and text-only (< 0) samples
    form separate megabatches of `megabatch` (= the global batch), each sorted longest first; the
    megabatches are shuffled and the two leftovers form one final batch. LLaVA also balances lengths
    across ranks inside a megabatch; that part depends on the world size and is left out here."""
    rng = np.random.default_rng([seed, 7919])
    groups = []
    for sign in (1, -1):
        members = [i for i, length in enumerate(lengths) if (length > 0) == (sign > 0)]
        members = [members[int(j)] for j in rng.permutation(len(members))]
        chunks = [sorted(members[k : k + megabatch], key=lambda i: -abs(lengths[i]))
                  for k in range(0, len(members), megabatch)]
        groups.append(chunks)
    leftovers = [c.pop() for c in groups if c and len(c[-1]) < megabatch]
    full = [chunk for chunks in groups for chunk in chunks]
    shuffled = [full[int(i)] for i in rng.permutation(len(full))]
    tail = sorted(i for chunk in leftovers for i in chunk)
    return [order[i] for chunk in [*shuffled, tail] for i in chunk]


def stage_order(epoch_fn: Callable[[int], list[Item]], epochs: float, max_steps: int | None,
                global_batch: int) -> tuple[list[Item], int]:
    """Concatenate epochs until `epochs` (or `max_steps` global batches) are covered: (order, steps)."""
    first = epoch_fn(0)
    if not first:
        raise MmcoreError("the stage's datasets are empty; check [data.datasets] sizes and paths")
    steps = max_steps or max(1, math.floor(len(first) * epochs / global_batch))
    needed = steps * global_batch
    order, epoch = list(first), 1
    while len(order) < needed:
        order += epoch_fn(epoch)
        epoch += 1
    return order[:needed], steps


def rank_batches(step_start: int, steps: int, rank: int, world: int, batch: int, accum: int,
                 bounds: list[int] | None = None) -> list[list[int]]:
    """Positions in the global order of this rank's micro-batches from `step_start` on.

    Micro-batch m of rank r in step s is the global micro-batch k = (s·accum + m)·world + r: positions
    [k·batch, (k+1)·batch), or [bounds[k], bounds[k+1]) when micro-batches differ in size (`loader_draws`).
    With one batch size, step s covers positions [s·G, (s+1)·G) with G = batch·world·accum. A 1-process run
    with accumulation sees the same samples per optimizer step as an N-process run with the same world × accum.
    """
    out = []
    for step in range(step_start, steps):
        for micro in range(accum):
            k = (step * accum + micro) * world + rank
            start, end = (k * batch, (k + 1) * batch) if bounds is None else (bounds[k], bounds[k + 1])
            out.append(list(range(start, end)))
    return out


class _Stream:
    """A dataset's own sample stream: epoch after epoch, each a permutation drawn from (seed, name, epoch)."""

    def __init__(self, name: str, size: int, seed: int) -> None:
        self.key, self.size, self.seed = zlib.crc32(name.encode()), size, seed
        self.epoch, self.cursor = 0, 0
        self.perm = np.random.default_rng([seed, self.key, 0]).permutation(size)

    def take(self, count: int) -> list[int]:
        """The next `count` indices, crossing into the next epoch when one runs out."""
        out: list[int] = []
        while len(out) < count:
            if self.cursor == self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
                self.perm = np.random.default_rng([self.seed, self.key, self.epoch]).permutation(self.size)
            end = min(self.size, self.cursor + count - len(out))
            out += [int(i) for i in self.perm[self.cursor : end]]
            self.cursor = end
        return out


def loader_draws(sizes: dict[str, int], loaders: dict[str, tuple[int, float]], seed: int,
                 draws: int) -> tuple[list[Item], list[int]]:
    """MiniGPT-v2's `MultiIterLoader` (minigpt4/datasets/datasets/dataloader_utils.py; runner_base.py): every
    draw picks dataset d with probability sample_ratio_d / Σ ratios and takes its loader's next batch —
    `batch_size_d` samples of d's own stream (a fresh permutation every pass over d, as `IterLoader` restarts a
    shuffled DataLoader). `loaders`: name → (batch_size, sample_ratio).

    Returns (order, bounds): draw k is order[bounds[k]:bounds[k+1]]. The picks come from (seed) alone and each
    stream from (seed, name), so the draws depend only on the seed and a longer run extends a shorter one.
    Upstream draws per rank with `random.choices` (seeded by seed + rank); here the draws are one sequence shared
    by every rank (`rank_batches`), so the run does not depend on how the draws are laid out on processes.
    """
    names = list(loaders)
    ratios = np.array([loaders[n][1] for n in names], dtype=float)
    cdf = np.cumsum(ratios / ratios.sum())
    uniform = np.random.default_rng([seed, 0x4D475632]).random(draws)  # 'MGV2'
    picks = np.minimum(np.searchsorted(cdf, uniform, side="right"), len(names) - 1)
    streams = {n: _Stream(n, sizes[n], seed) for n in names}
    order: list[Item] = []
    bounds = [0]
    for pick in picks:
        name = names[int(pick)]
        order += [(name, i) for i in streams[name].take(loaders[name][0])]
        bounds.append(len(order))
    return order, bounds


def loader_steps(sizes: dict[str, int], loaders: dict[str, tuple[int, float]], epochs: float,
                 max_steps: int | None, draws_per_step: int, samples_per_epoch: int | None = None) -> int:
    """Optimizer steps of a MiniGPT-v2 mixture stage: `max_steps` (upstream: max_epoch × iters_per_epoch), else
    `epochs` passes over `samples_per_epoch` (default: every sample once) at the expected samples per step,
    draws_per_step × Σ_d p_d · batch_size_d."""
    if max_steps:
        return max_steps
    ratios = np.array([loaders[n][1] for n in loaders], dtype=float)
    expected = float(np.dot(ratios / ratios.sum(), [loaders[n][0] for n in loaders]))
    total = samples_per_epoch or sum(sizes[n] for n in loaders)
    return max(1, math.floor(epochs * total / (draws_per_step * expected)))
