"""Collating encoded samples and their preprocessed media into one `Batch` of tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mmcore.sequence._builder import Encoded, SequenceBuilder

__all__ = ["Batch", "collate"]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) long; media positions hold the pad id
    attention_mask: torch.Tensor  # (B, L) long
    position_ids: torch.Tensor  # (B, L) long, counting real tokens only (left padding safe)
    labels: torch.Tensor  # (B, L) long, IGNORE_INDEX outside supervised text
    media_token_index: torch.Tensor  # (B, L) long: row of the flat media-token matrix, or -1 for text
    media: dict[str, torch.Tensor] = field(default_factory=dict)  # modality → (N_m, *item_shape)
    media_sample_index: dict[str, torch.Tensor] = field(default_factory=dict)  # modality → (N_m,)
    sample_ids: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        move = {k: v.to(device) for k, v in self.media.items()}
        index = {k: v.to(device) for k, v in self.media_sample_index.items()}
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                     self.labels.to(device), self.media_token_index.to(device), move, index,
                     self.sample_ids, self.targets)


def _media_index(encoded: list[Encoded], offsets: list[int], width: int, order: list[str],
                 tokens_per_item: dict[str, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B, L) index into cat([tokens of modality m, items in batch order] for m in order)."""
    index = torch.full((len(encoded), width), -1, dtype=torch.long)
    base, item_of = 0, {}
    for modality in order:
        count = sum(1 for e in encoded for m, _, _ in e.media_spans if m == modality)
        item_of[modality] = (base, count)
        base += count * tokens_per_item[modality]
    seen = dict.fromkeys(order, 0)
    owners: dict[str, list[int]] = {m: [] for m in order}
    for row, (e, left) in enumerate(zip(encoded, offsets, strict=True)):
        for modality, start, length in e.media_spans:
            first = item_of[modality][0] + seen[modality] * length
            index[row, left + start : left + start + length] = torch.arange(first, first + length)
            seen[modality] += 1
            owners[modality].append(row)
    return index, {m: torch.tensor(rows, dtype=torch.long) for m, rows in owners.items() if rows}


def collate(builder: SequenceBuilder, encoded: list[Encoded], media: list[dict[str, list[torch.Tensor]]],
            order: list[str], padding_side: Literal["left", "right"],
            targets: list[dict[str, Any]] | None = None) -> Batch:
    """Pad (right for training, left for generation) and stack media in placeholder order."""
    padded = builder.pad(encoded, padding_side)
    attention_mask = torch.tensor(padded["attention_mask"], dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    width = attention_mask.shape[1]
    index, owners = _media_index(encoded, padded["offsets"], width, order, builder.tokens_per_item)
    stacked = {}
    for modality in order:
        items = [t for sample in media for t in sample.get(modality, [])]
        if items:
            stacked[modality] = torch.stack(items)
    return Batch(torch.tensor(padded["input_ids"], dtype=torch.long), attention_mask, position_ids,
                 torch.tensor(padded["labels"], dtype=torch.long), index, stacked, owners,
                 [e.sample_id for e in encoded], targets or [{} for _ in encoded])
