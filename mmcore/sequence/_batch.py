"""Collating encoded samples, their media views and their targets into one `Batch` of tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mmcore.sequence._builder import Encoded, SequenceBuilder

__all__ = ["Batch", "MediaBatch", "TargetBatch", "collate", "target_batches"]

Item = tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]  # consumer → tensor, consumer → metadata


@dataclass
class MediaBatch:
    """The batch's items of one modality, in placeholder order, as each consumer's view prepared them."""

    views: dict[str, torch.Tensor]  # consumer ("encoders.vision", "heads.seg") → (N, *item shape)
    sample_index: torch.Tensor  # (N,) the batch row each item belongs to
    meta: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # consumer → per item metadata

    def to(self, device: torch.device | str) -> MediaBatch:
        return MediaBatch({k: v.to(device) for k, v in self.views.items()}, self.sample_index.to(device), self.meta)


@dataclass
class TargetBatch:
    """One kind of target ("masks", "boxes") of a batch, as tensors with the batch row of each.

    Boxes: `values` (K, 4). Masks (2-D items of different sizes): `values` (K, H_max, W_max) padded with 0
    bottom-right and `sizes` (K, 2) giving each item's own (H, W). Items of one row keep their order (the
    j-th target of a row belongs to its j-th trigger).
    """

    values: torch.Tensor  # (K, ...)
    sample_index: torch.Tensor  # (K,) long: the batch row of each target
    sizes: torch.Tensor | None = None  # (K, 2) long: each 2-D item's own (H, W), or None

    def __len__(self) -> int:
        return int(self.sample_index.numel())

    def to(self, device: torch.device | str) -> TargetBatch:
        sizes = None if self.sizes is None else self.sizes.to(device)
        return TargetBatch(self.values.to(device), self.sample_index.to(device), sizes)

    def rows(self) -> dict[int, list[torch.Tensor]]:
        """Batch row → its items in order (masks cropped to their own size)."""
        from mmcore.kinds.head import targets_by_row

        return targets_by_row({"items": self}, "items")

    @classmethod
    def from_rows(cls, rows: dict[int, list[Any]]) -> TargetBatch | None:
        """Batch row → its items (arrays, lists or tensors of one rank) → one TargetBatch; None when empty.
        Vectors (boxes) become float32; 2-D items (masks) stay float32 when floating, else uint8 (0, 1, 255 =
        ignore)."""
        import numpy as np

        items = [(row, torch.as_tensor(np.asarray(v))) for row, values in sorted(rows.items()) for v in values]
        if not items:
            return None
        index = torch.tensor([row for row, _ in items], dtype=torch.long)
        tensors = [t.float() if t.is_floating_point() or t.dim() < 2 else t.to(torch.uint8) for _, t in items]
        if len({t.dim() for t in tensors}) > 1:
            raise ValueError(f"targets of one kind mix shapes {sorted({tuple(t.shape) for t in tensors})}")
        if tensors[0].dim() < 2:
            return cls(torch.stack(tensors), index)
        sizes = torch.tensor([list(t.shape[-2:]) for t in tensors], dtype=torch.long)  # (K, 2)
        height, width = (int(v) for v in sizes.max(dim=0).values)
        padded = tensors[0].new_zeros((len(tensors), *tensors[0].shape[:-2], height, width))
        for k, tensor in enumerate(tensors):
            padded[k, ..., : tensor.shape[-2], : tensor.shape[-1]] = tensor
        return cls(padded, index, sizes)


def target_batches(per_row: list[dict[str, list[Any]]]) -> dict[str, TargetBatch]:
    """One dict of targets per batch row ({"masks": [...], "boxes": [...]}) → key → TargetBatch."""
    keys = dict.fromkeys(k for row in per_row for k in row)
    out = {}
    for key in keys:
        found = TargetBatch.from_rows({r: list(row[key]) for r, row in enumerate(per_row) if row.get(key) is not None})
        if found is not None:
            out[key] = found
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) long; media positions hold the pad id
    attention_mask: torch.Tensor  # (B, L) long
    position_ids: torch.Tensor  # (B, L) long, counting real tokens only (left padding safe)
    labels: torch.Tensor  # (B, L) long, IGNORE_INDEX outside learned text
    media_token_index: torch.Tensor  # (B, L) long: row of the flat media-token matrix, or -1 for text
    media: dict[str, MediaBatch] = field(default_factory=dict)  # modality → its items
    sample_ids: list[str] = field(default_factory=list)
    targets: dict[str, TargetBatch] = field(default_factory=dict)  # what the heads consume ("masks", "boxes")

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                     self.labels.to(device), self.media_token_index.to(device),
                     {m: b.to(device) for m, b in self.media.items()}, self.sample_ids,
                     {k: t.to(device) for k, t in self.targets.items()})


def _media_index(encoded: list[Encoded], offsets: list[int], width: int, order: list[str],
                 tokens_per_item: dict[str, int]) -> torch.Tensor:
    """(B, L) index into cat([tokens of modality m, items in batch order] for m in order)."""
    index = torch.full((len(encoded), width), -1, dtype=torch.long)
    base, first_of = 0, {}
    for modality in order:
        count = sum(1 for e in encoded for m, _, _ in e.media_spans if m == modality)
        first_of[modality] = base
        base += count * tokens_per_item[modality]
    seen = dict.fromkeys(order, 0)
    for row, (e, left) in enumerate(zip(encoded, offsets, strict=True)):
        for modality, start, length in e.media_spans:
            first = first_of[modality] + seen[modality] * length
            index[row, left + start : left + start + length] = torch.arange(first, first + length)
            seen[modality] += 1
    return index


def _stack(media: list[dict[str, list[Item]]], order: list[str]) -> dict[str, MediaBatch]:
    """Per modality: each consumer's tensors stacked in batch order, with their rows and metadata."""
    out = {}
    for modality in order:
        rows = [(row, item) for row, sample in enumerate(media) for item in sample.get(modality, [])]
        if not rows:
            continue
        consumers = list(rows[0][1][0])
        views = {c: torch.stack([item[0][c] for _, item in rows]) for c in consumers}
        meta = {c: [item[1].get(c, {}) for _, item in rows] for c in consumers}
        out[modality] = MediaBatch(views, torch.tensor([row for row, _ in rows], dtype=torch.long), meta)
    return out


def collate(builder: SequenceBuilder, encoded: list[Encoded], media: list[dict[str, list[Item]]],
            order: list[str], padding_side: Literal["left", "right"],
            targets: list[dict[str, Any]] | None = None) -> Batch:
    """Pad (right for training, left for generation), stack media in placeholder order and targets as tensors
    with their rows (`targets`: one dict per sample of the items the heads consume)."""
    padded = builder.pad(encoded, padding_side)
    attention_mask = torch.tensor(padded["attention_mask"], dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    width = attention_mask.shape[1]
    index = _media_index(encoded, padded["offsets"], width, order, builder.tokens_per_item)
    return Batch(torch.tensor(padded["input_ids"], dtype=torch.long), attention_mask, position_ids,
                 torch.tensor(padded["labels"], dtype=torch.long), index, _stack(media, order),
                 [e.sample_id for e in encoded], target_batches(targets or []))
