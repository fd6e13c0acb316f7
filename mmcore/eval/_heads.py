"""Head metrics in `mmcore eval`, with each head's own accumulator (`Head.metrics()`: RES cIoU / gIoU, box
Prec@0.5), in two modes:

* teacher-forced, as u-LLaVA's `evaluation/eval_ullava.py` (`model(**batch, inference=True)` on the reference
  conversation holding `[SEG]` / `[LOC]`; batch 1 there, right-padded batches here): the data path's own rule
  picks the samples that feed a head (its trigger in the conversation, one target per trigger) and skips and
  counts the others by reason;
* free-running, as a user runs the model: the triggers the model GENERATES after the prompt (the reference's
  last reply removed), matched in order to that reply's targets (the last k of the sample's, k = the triggers
  the reference reply holds). A reference target without a generated trigger counts as a miss (an empty mask,
  a box of IoU 0); triggers beyond the reference's are counted as `extra_triggers`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from mmcore.errors import SampleError
from mmcore.kinds import Head, HeadMetric, Overlay, Sample
from mmcore.kinds.head import select_predictions
from mmcore.sequence import TargetBatch

__all__ = ["HeadScores", "free_running", "teacher_forced"]


@dataclass
class HeadScores:
    """Each head's metric accumulators in both modes, generated triggers beyond the references, and the samples
    the teacher-forced pass skipped (by reason)."""

    teacher: dict[str, HeadMetric]
    free: dict[str, HeadMetric]
    extra: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, model: Any) -> HeadScores | None:
        """Fresh accumulators for every head of `model` that has a metric; None when there is none."""
        heads = {n: cast(Head, h) for n, h in model.heads.items() if cast(Head, h).metrics() is not None}
        if not heads:
            return None
        return cls({n: cast(HeadMetric, h.metrics()) for n, h in heads.items()},
                   {n: cast(HeadMetric, h.metrics()) for n, h in heads.items()})

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: {"teacher_forced": _rounded(self.teacher[name].result()),
                                      "free_running": _rounded(self.free[name].result()),
                                      "extra_triggers": self.extra[name]} for name in self.teacher}
        if self.skipped:
            out["teacher_forced_skipped"] = dict(sorted(self.skipped.items()))
        return out


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def _feeds(sample: Sample, heads: dict[str, Head]) -> bool:
    return any(h.target_key is not None and any(h.trigger_token in t.text for t in sample.conversation)
               for h in heads.values())


def teacher_forced(pipeline: Any, samples: list[Sample], template: str, scores: HeadScores) -> None:
    """The reference conversations of the samples that feed a head, through the model in one right-padded batch;
    each head's predictions (one per trigger) scored against the batch's targets."""
    heads = {n: cast(Head, h) for n, h in pipeline.model.heads.items() if n in scores.teacher}
    prepared = []
    for sample in samples:
        if not _feeds(sample, heads):
            continue
        try:
            prepared.append(pipeline.processor.prepare(sample, template, train=True))
        except SampleError as err:
            scores.skipped[err.reason] += 1
    if not prepared:
        return
    batch = pipeline.processor.collate(prepared, train=True).to(pipeline.device)
    with torch.no_grad():
        out = pipeline.model(batch)
    for name in heads:
        scores.teacher[name].update(out.head_outputs[name], batch.targets)


def _reference(sample: Sample, head: Head) -> list[Any]:
    """The targets of the reference (last) reply's triggers: the last k of the sample's, k = its triggers."""
    replies = [t for t in sample.conversation if t.role == "assistant"]
    count = replies[-1].text.count(head.trigger_token) if replies and head.target_key else 0
    items = list(sample.targets.get(str(head.target_key)) or []) if count else []
    return items[len(items) - count:] if count <= len(items) else []


def free_running(pipeline: Any, samples: list[Sample], heads_out: dict[str, dict[str, Any]],
                 scores: HeadScores) -> list[list[Overlay]]:
    """The predictions for the triggers each answer generated, matched in order to its reference reply's targets;
    returns what to draw per sample (the predictions)."""
    drawn: list[list[Overlay]] = [[] for _ in samples]
    for name, predictions in heads_out.items():
        head = cast(Head, pipeline.model.heads[name])
        if name not in scores.free:
            continue
        rows = predictions["sample_index"].tolist()
        keep = torch.zeros(len(rows), dtype=torch.bool)
        matched: dict[int, list[Any]] = {}
        for row, sample in enumerate(samples):
            mine = [k for k, r in enumerate(rows) if r == row]
            reference = _reference(sample, head)
            used = min(len(mine), len(reference))
            keep[mine[:used]] = True
            matched[row] = reference[:used]
            scores.extra[name] += len(mine) - used
            for target in reference[used:]:
                scores.free[name].miss(torch.as_tensor(np.asarray(target)))
        targets = TargetBatch.from_rows(matched)
        if targets is not None and head.target_key is not None:
            scores.free[name].update(select_predictions(predictions, keep), {head.target_key: targets})
        for row, own in enumerate(head.split(predictions, len(samples))):
            drawn[row] += head.overlays(own)
    return drawn
