"""Retrievers enhance encoder features from a cache (ImageBind-LLM's training-free kNN)."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from mmcore.kinds._base import Component
from mmcore.kinds.encoder import Features

__all__ = ["Retriever"]


class Retriever(Component):
    """Base retriever: `enhance` mixes top-k cached neighbours into the features."""

    kind: ClassVar[str] = "retriever"

    @abstractmethod
    def enhance(self, features: Features) -> Features:
        """Features → features mixed with their retrieved neighbours."""

    @abstractmethod
    def build_index(self, embeddings: torch.Tensor) -> None:
        """Add (N, C) embeddings to the cache."""
