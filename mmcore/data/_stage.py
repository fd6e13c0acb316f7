"""A stage's samples in data-loader workers: global position → dataset record → `Processor` → `Batch`.

A bad record never stops an epoch: it becomes a `Skipped` marker counted by reason (unless the data
is `strict`, where the trainer stops and names the record).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from mmcore.data._mixture import Item
from mmcore.data._processor import Prepared, Processor
from mmcore.errors import SampleError
from mmcore.kinds import BuildContext, Dataset, Sample
from mmcore.sequence import Batch

__all__ = ["LoadedBatch", "Skipped", "StageData", "build_datasets", "modality_lengths"]


@dataclass
class Skipped:
    """A record that could not become a sample, and why."""

    reason: str
    message: str


@dataclass
class LoadedBatch:
    batch: Batch | None  # None when every record of the micro-batch was skipped
    skipped: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None
    tokens: int = 0
    origins: list[str] = field(default_factory=list)  # "dataset#index 'sample id'" of each row of `batch`


def build_datasets(assembly: Any, names: list[str]) -> dict[str, Dataset]:
    """Instantiate the named [data.datasets] through the registry, with one-line config errors."""
    from mmcore.assembly._build import ComponentSite, build_component

    built = {}
    for name in names:
        spec = assembly.loaded.manifest.data.datasets[name]
        site = ComponentSite(assembly.loaded, ("data", "datasets", name))
        ctx = BuildContext(name=name, base_dir=assembly.loaded.base_dir, tokenizer=assembly.model.llm.tokenizer)
        built[name], _ = build_component(site, assembly.registry, "dataset", spec, ctx)
        if spec.pack_turns:
            from mmcore.data._packing import PackedDataset

            built[name] = PackedDataset(built[name], spec.pack_turns, spec.dedup, assembly.loaded.manifest.seed)
    return built


class StageData(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Global position → prepared sample (or Skipped). Runs in DataLoader workers."""

    def __init__(self, processor: Processor, datasets: dict[str, Dataset], order: list[Item], template: str) -> None:
        self.processor = processor
        self.datasets = datasets
        self.order = order
        self.template = template

    def __len__(self) -> int:
        return len(self.order)

    def sample(self, position: int) -> Sample:
        name, index = self.order[position]
        return self.datasets[name][index]

    def __getitem__(self, position: int) -> Prepared | Skipped:
        name, index = self.order[position]
        try:
            prepared = self.processor.prepare(self.sample(position), self.template, train=True)
        except SampleError as err:
            return Skipped(err.reason, f"dataset '{name}' record {index}: {err}")
        prepared.origin = f"{name}#{index} '{prepared.encoded.sample_id}'"
        return prepared

    def collate(self, items: list[Prepared | Skipped]) -> LoadedBatch:
        good = [i for i in items if isinstance(i, Prepared)]
        bad = [i for i in items if isinstance(i, Skipped)]
        skipped = Counter(b.reason for b in bad)
        first = bad[0].message if bad else None
        if not good:
            return LoadedBatch(None, skipped, first)
        batch = self.processor.collate(good, train=True)
        return LoadedBatch(batch, skipped, first, int(batch.attention_mask.sum()), [g.origin for g in good])


def modality_lengths(datasets: dict[str, Dataset], order: list[Item]) -> list[int]:
    """LLaVA `modality_lengths`: word count, positive with media and negative for text-only samples."""
    lengths = []
    for name, index in order:
        try:
            sample = datasets[name][index]
        except SampleError:
            lengths.append(1)
            continue
        words = sum(len(t.text.split()) for t in sample.conversation) or 1
        lengths.append(words if any(sample.media.values()) else -words)
    return lengths
