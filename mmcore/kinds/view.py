"""Media views: a component's own preprocessing of one raw media item, run in data-loader workers.

Every component that reads raw media declares a view: an encoder (CLIP's resize, crop and normalise), a
head that needs its own copy of the image (SAM's 1024-px padded image), a retriever. A view is a small
picklable object, never the module itself, so data-loader workers (fork or spawn) carry no weights. It
returns the item's tensor and, when postprocessing needs them later, metadata such as the original and
resized sizes, which travel with the batch to the component.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

__all__ = ["MediaView", "Viewed"]

Viewed = tuple[torch.Tensor, dict[str, Any]]  # the item's tensor, its metadata ({} when there is none)


class MediaView(ABC):
    """One component's preprocessing of one media item (path, PIL image, array) → `Viewed`."""

    @abstractmethod
    def __call__(self, item: Any, modality: str) -> Viewed:
        """Prepare `item` of `modality`; raise FileNotFoundError / OSError / ValueError for a bad item."""
