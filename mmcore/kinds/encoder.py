"""Encoders turn preprocessed media of their modalities into `Features`."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mmcore.errors import MmcoreError
from mmcore.kinds._base import Component, FeatureSpec
from mmcore.kinds.view import MediaView

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

    `media_view` returns the encoder's preprocessing (file or PIL in, tensor out) as a picklable object that
    runs in data-loader workers; `forward` sees tensors only.
    """

    kind: ClassVar[str] = "encoder"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    # Config fields that only change `media_view`; a stage may override them (`[stages.preprocess.NAME]`).
    preprocessing_fields: ClassVar[tuple[str, ...]] = ()
    cached_module: ClassVar[str | None] = ""  # `cache_features = true` caches the whole encoder's Features

    @classmethod
    def check_preprocessing(cls, config: Any, **options: Any) -> Any:
        """`config` with a stage's preprocessing overrides applied and validated (no instance needed, so
        assembly checks `[stages.preprocess.NAME]` before building anything)."""
        unknown = sorted(set(options) - set(cls.preprocessing_fields))
        if unknown:
            raise MmcoreError(f"{unknown} cannot change per stage; preprocessing options of "
                              f"{cls.__name__}: {list(cls.preprocessing_fields) or 'none'}")
        return type(config).model_validate({**config.model_dump(), **options})

    def preprocessing_config(self, **options: Any) -> Any:
        """This encoder's Config with a stage's preprocessing overrides applied and validated."""
        return self.check_preprocessing(self.config, **options)

    @property
    @abstractmethod
    def output_spec(self) -> FeatureSpec:
        """Dimension, token count and grid of the features of one media item."""

    def feature_spec(self, modality: str) -> FeatureSpec:
        """The features of one item of `modality`: `output_spec` unless the encoder shapes a modality its own way
        (CLIP video: T temporal + N spatial tokens, no grid — u-LLaVA `encode_video`)."""
        return self.output_spec

    @abstractmethod
    def input_shape(self, modality: str) -> tuple[int, ...]:
        """Shape of one preprocessed item of `modality` (e.g. (3, 336, 336))."""

    @abstractmethod
    def media_view(self, **preprocessing: Any) -> MediaView:
        """This encoder's preprocessing, with a stage's `preprocessing` overrides applied (validate them
        with `preprocessing_config`): a picklable view whose tensors have `input_shape(modality)`."""

    @abstractmethod
    def forward(self, media: torch.Tensor, modality: str) -> Features:
        """(B, *input_shape) → Features with tokens (B, N, C)."""
