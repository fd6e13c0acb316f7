"""Honeybee's multi-turn packing with de-duplication (`BaseTaskDataset.finalize_data`, upstream-systems.md §2.4).

The examples of one image become one multi-turn sample of at most `turns` question/answer pairs.
Before chunking, pairs that repeat an answer (or a box) within the image are dropped, so a later
turn cannot be answered by copying an earlier one — Honeybee's shortcut-learning fix (its Table 5d).
Clusters are shuffled with the seed; everything is deterministic.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import numpy as np

from mmcore.errors import SampleError
from mmcore.kinds import Dataset, Sample, Turn

__all__ = ["PackedDataset"]


def _answer_key(sample: Sample) -> str:
    answers = [t.text for t in sample.conversation if t.role == "assistant"]
    return re.sub(r"[^a-z0-9]+", " ", (answers[-1] if answers else "").lower()).strip()


def _box_key(sample: Sample) -> str:
    boxes = sample.targets.get("boxes") or []
    return ",".join(f"{v:.3f}" for v in boxes[0]) if boxes else _answer_key(sample)


class PackedDataset(Dataset):
    """`dataset`'s records grouped per image (`Dataset.media_key`), de-duplicated, chunked into turns."""

    kind: ClassVar[str] = "dataset"

    def __init__(self, dataset: Dataset, turns: int, dedup: Literal["none", "answer", "box"], seed: int) -> None:
        self.dataset, self.turns, self.dedup = dataset, turns, dedup
        self.name = getattr(dataset, "name", "dataset")
        self.config = getattr(dataset, "config", None)
        self.dropped = 0  # duplicates removed
        clusters: dict[str, list[int]] = {}
        key_of = {"answer": _answer_key, "box": _box_key}.get(dedup)
        seen: dict[str, set[str]] = {}
        for index in range(len(dataset)):
            media = dataset.media_key(index)
            group = media if media is not None else f"#{index}"  # no media key: the record stays alone
            if key_of is not None:
                try:
                    key = key_of(dataset[index])
                except SampleError:
                    key = f"#bad{index}"  # kept: it is skipped (and counted) when loaded
                if key in seen.setdefault(group, set()):
                    self.dropped += 1
                    continue
                seen[group].add(key)
            clusters.setdefault(group, []).append(index)
        rng = np.random.default_rng(seed)
        self.items: list[list[int]] = []
        for members in clusters.values():
            members = [members[i] for i in rng.permutation(len(members))]
            self.items += [members[i : i + turns] for i in range(0, len(members), turns)]

    def __len__(self) -> int:
        return len(self.items)

    def media_key(self, index: int) -> str | None:
        return self.dataset.media_key(self.items[index][0])

    def __getitem__(self, index: int) -> Sample:
        members = [self.dataset[i] for i in self.items[index]]
        first = members[0]
        turns: list[Turn] = list(first.conversation)
        for sample in members[1:]:  # later turns: the same image, so no placeholder again
            for turn in sample.conversation:
                if turn.role == "system":
                    continue
                text = re.sub(r"<[a-z_]+>\n?", "", turn.text).strip() if turn.role == "user" else turn.text
                turns.append(Turn(turn.role, text))
        return Sample(id="+".join(s.id for s in members), conversation=turns, media=first.media,
                      targets=first.targets, task=first.task)

    def describe(self) -> dict[str, Any]:
        return {"records": len(self.dataset), "packed": len(self), "duplicates_dropped": self.dropped}
