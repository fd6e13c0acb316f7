"""Collating encoded samples and their media views into one `Batch` of tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mmcore.sequence._builder import Encoded, SequenceBuilder

__all__ = ["Batch", "MediaBatch", "collate"]

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
class Batch:
    input_ids: torch.Tensor  # (B, L) long; media positions hold the pad id
    attention_mask: torch.Tensor  # (B, L) long
    position_ids: torch.Tensor  # (B, L) long, counting real tokens only (left padding safe)
    labels: torch.Tensor  # (B, L) long, IGNORE_INDEX outside learned text
    media_token_index: torch.Tensor  # (B, L) long: row of the flat media-token matrix, or -1 for text
    media: dict[str, MediaBatch] = field(default_factory=dict)  # modality → its items
    sample_ids: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                     self.labels.to(device), self.media_token_index.to(device),
                     {m: b.to(device) for m, b in self.media.items()}, self.sample_ids, self.targets)


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
    """Pad (right for training, left for generation) and stack media in placeholder order."""
    padded = builder.pad(encoded, padding_side)
    attention_mask = torch.tensor(padded["attention_mask"], dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    width = attention_mask.shape[1]
    index = _media_index(encoded, padded["offsets"], width, order, builder.tokens_per_item)
    return Batch(torch.tensor(padded["input_ids"], dtype=torch.long), attention_mask, position_ids,
                 torch.tensor(padded["labels"], dtype=torch.long), index, _stack(media, order),
                 [e.sample_id for e in encoded], targets or [{} for _ in encoded])
