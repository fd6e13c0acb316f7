"""Datasets yield canonical `Sample` records from files or generators."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from torch.utils.data import Dataset as TorchDataset

from mmcore.kinds._base import DataComponent
from mmcore.kinds.sample import Sample

__all__ = ["Dataset"]


class Dataset(DataComponent, TorchDataset):  # type: ignore[type-arg]
    """Base dataset: random access to `Sample`s. Preprocessing happens later, in the collator."""

    kind: ClassVar[str] = "dataset"

    @classmethod
    def data_paths(cls, config: Any) -> dict[str, str]:
        """The files and folders this dataset reads: config key → path as written (relative to the manifest).
        Assembly checks they exist before any training starts."""
        return {}

    @classmethod
    def special_tokens(cls, config: Any) -> list[str]:
        """Tokens its text uses that must be single special tokens (u-LLaVA's answer format: `[tag]`, `[/tag]`).
        Assembly registers them with the LLM after the heads' triggers; answers keep them as text."""
        return []

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    def media_key(self, index: int) -> str | None:
        """What identifies record `index`'s image, so multi-turn packing can group an image's records.
        Default: the first media item when it is a path; None (never grouped) otherwise. Override
        when it is cheaper to know without loading the record."""
        from pathlib import Path

        from mmcore.errors import SampleError

        try:
            sample = self[index]
        except SampleError:
            return None
        first = next((items[0] for items in sample.media.values() if items), None)
        return str(first) if isinstance(first, (str, Path)) else None
