"""Datasets yield canonical `Sample` records from files or generators."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from torch.utils.data import Dataset as TorchDataset

from mmcore.kinds._base import BuildContext, ComponentConfig
from mmcore.kinds.sample import Sample

__all__ = ["Dataset"]


class Dataset(TorchDataset):  # type: ignore[type-arg]
    """Base dataset: random access to `Sample`s. Preprocessing happens later, in the collator."""

    kind: ClassVar[str] = "dataset"
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        self.config = config
        self.name = ctx.name

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {}

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...
