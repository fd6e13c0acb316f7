"""Datasets yield canonical `Sample` records from files or generators."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from torch.utils.data import Dataset as TorchDataset

from mmcore.kinds._base import DataComponent
from mmcore.kinds.sample import Sample

__all__ = ["Dataset"]


class Dataset(DataComponent, TorchDataset):  # type: ignore[type-arg]
    """Base dataset: random access to `Sample`s. Preprocessing happens later, in the collator."""

    kind: ClassVar[str] = "dataset"

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...
