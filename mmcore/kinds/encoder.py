"""Encoders turn preprocessed media of their modalities into `Features`."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mmcore.kinds._base import Component, FeatureSpec

__all__ = ["Encoder", "Features"]


@dataclass
class Features:
    """An encoder's output for a batch of media items of one modality."""

    tokens: torch.Tensor  # (B, N, C)
    grid: tuple[int, int] | None = None  # (h, w) with h * w == N when the tokens form a grid
    pooled: torch.Tensor | None = None  # (B, C') one vector per item, when the encoder has one
    levels: tuple[torch.Tensor, ...] | None = None  # several layers, each (B, N, C), if requested


class Encoder(Component):
    """Base encoder. Subclasses declare `modalities` and describe their output with `output_spec`.

    `preprocess` runs in data-loader workers (file or PIL in, tensor out); `forward` sees tensors only.
    """

    kind: ClassVar[str] = "encoder"
    modalities: ClassVar[tuple[str, ...]] = ("image",)

    @property
    @abstractmethod
    def output_spec(self) -> FeatureSpec:
        """Dimension, token count and grid of the features of one media item."""

    @abstractmethod
    def input_shape(self, modality: str) -> tuple[int, ...]:
        """Shape of one preprocessed item of `modality` (e.g. (3, 336, 336))."""

    @abstractmethod
    def preprocess(self, item: Any, modality: str) -> torch.Tensor:
        """One raw media item (path, PIL image, array) → a tensor of `input_shape(modality)`."""

    @abstractmethod
    def forward(self, media: torch.Tensor, modality: str) -> Features:
        """(B, *input_shape) → Features with tokens (B, N, C)."""
