"""Retrievers enhance encoder features from a cache (ImageBind-LLM's training-free kNN).

A retriever serves one encoder (`[model.retriever] encoder = NAME`); the model hands it that encoder
(`bind_encoder`) so it can check that its cache was built with the same one. It runs at inference only: in
training mode `enhance` is skipped unless the retriever's own config says otherwise (`applies_in_training`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from mmcore.kinds._base import Component
from mmcore.kinds.encoder import Encoder, Features

__all__ = ["Retriever"]


class Retriever(Component):
    """Base retriever: `enhance` mixes top-k cached neighbours into the features."""

    kind: ClassVar[str] = "retriever"
    encoder: Encoder | None = None

    def bind_encoder(self, encoder: Encoder) -> None:
        """Called once by the model with the encoder whose features this retriever enhances."""
        object.__setattr__(self, "encoder", encoder)  # a reference, not a sub-module (no double registration)

    @property
    def applies_in_training(self) -> bool:
        """Whether `enhance` runs while the model trains (a config's `training = true`; default: inference only)."""
        return bool(getattr(self.config, "training", False))

    @abstractmethod
    def enhance(self, features: Features) -> Features:
        """Features → features mixed with their retrieved neighbours."""

    @abstractmethod
    def build_index(self, embeddings: torch.Tensor) -> None:
        """Add (N, C) embeddings to the cache."""
