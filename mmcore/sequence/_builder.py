"""One sequence builder for training and generation.

Segments (from a template) → token ids with media placeholders expanded to exactly the projector's
token count → labels from the ids of supervised segments → padded batches with attention masks,
position ids and an index that says which media token goes where.

Rules: a placeholder/media count mismatch is a `SampleError` at data time; truncation never cuts a
media span (a sample whose media does not fit is an error); a training sample with no supervised
token left is an error, never a silently fully-masked sample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from mmcore.errors import SampleError
from mmcore.kinds.sample import Segment

__all__ = ["IGNORE_INDEX", "Encoded", "SequenceBuilder", "placeholder"]

IGNORE_INDEX = -100  # LLaVA constants.IGNORE_INDEX; also torch's cross-entropy default


def placeholder(modality: str) -> str:
    """The text placeholder of a modality: `<image>`, `<audio>`, ..."""
    return f"<{modality}>"


@dataclass
class Encoded:
    """One tokenized sample. Media positions hold the pad id and IGNORE labels."""

    sample_id: str
    input_ids: list[int]
    labels: list[int]
    media_spans: list[tuple[str, int, int]] = field(default_factory=list)  # (modality, start, length)


class SequenceBuilder:
    """Tokenizes segments with media placeholders; `tokens_per_item[modality]` comes from assembly."""

    def __init__(self, tokenizer: Any, tokens_per_item: dict[str, int], max_length: int) -> None:
        self.tokenizer = tokenizer
        self.tokens_per_item = dict(tokens_per_item)
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        names = "|".join(re.escape(placeholder(m)) for m in tokens_per_item)
        self._split = re.compile(f"({names})") if names else None
        self._modality = {placeholder(m): m for m in tokens_per_item}

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids) if text else []

    def _pieces(self, text: str) -> list[str]:
        return [p for p in self._split.split(text) if p] if self._split else ([text] if text else [])

    def encode(self, segments: list[Segment], media_counts: dict[str, int], sample_id: str,
               add_bos: bool = True, train: bool = True) -> Encoded:
        """Segments → ids/labels/media spans; `train` requires at least one supervised token."""
        self._check_modalities(media_counts, sample_id)
        ids: list[int] = []
        labels: list[int] = []
        spans: list[tuple[str, int, int]] = []
        if add_bos and self.tokenizer.bos_token_id is not None:
            ids.append(int(self.tokenizer.bos_token_id))
            labels.append(IGNORE_INDEX)
        for segment in segments:
            for piece in self._pieces(segment.text):
                modality = self._modality.get(piece)
                if modality is None:
                    piece_ids = self._ids(piece)
                    ids += piece_ids
                    labels += piece_ids if segment.supervised else [IGNORE_INDEX] * len(piece_ids)
                    continue
                if segment.supervised:
                    raise SampleError(f"sample '{sample_id}': {piece} appears in an assistant reply; "
                                      f"media placeholders belong in user turns", "placeholder-mismatch")
                length = self.tokens_per_item[modality]
                spans.append((modality, len(ids), length))
                ids += [self.pad_id] * length  # Contract: labels of media positions are IGNORE
                labels += [IGNORE_INDEX] * length
        self._check_counts(spans, media_counts, sample_id)
        return self._truncate(Encoded(sample_id, ids, labels, spans), train)

    def _check_modalities(self, media_counts: dict[str, int], sample_id: str) -> None:
        for modality, count in media_counts.items():
            if count and modality not in self.tokens_per_item:
                encoded = ", ".join(self.tokens_per_item) or "none"
                raise SampleError(f"sample '{sample_id}': has {modality} media but no encoder takes "
                                  f"'{modality}' (encoded: {encoded})", "unknown-modality")

    def _check_counts(self, spans: list[tuple[str, int, int]], media_counts: dict[str, int],
                      sample_id: str) -> None:
        for modality in self.tokens_per_item:
            found = sum(1 for m, _, _ in spans if m == modality)
            given = media_counts.get(modality, 0)
            if found != given:
                raise SampleError(f"sample '{sample_id}': {found} {placeholder(modality)} placeholder(s) "
                                  f"but {given} {modality} item(s); make them match", "placeholder-mismatch")

    def _truncate(self, encoded: Encoded, train: bool) -> Encoded:
        sid = encoded.sample_id
        if len(encoded.input_ids) > self.max_length:
            media_end = max((start + length for _, start, length in encoded.media_spans), default=0)
            if media_end > self.max_length:
                raise SampleError(f"sample '{sid}': its media ends at token {media_end}, past max_length "
                                  f"{self.max_length}; raise [model] max_length or shorten the sample", "over-length")
            encoded.input_ids = encoded.input_ids[: self.max_length]
            encoded.labels = encoded.labels[: self.max_length]
        if train and all(label == IGNORE_INDEX for label in encoded.labels):
            raise SampleError(f"sample '{sid}': no supervised token within max_length {self.max_length} "
                              f"(over-length or no assistant reply); it would train on nothing", "no-supervision")
        return encoded

    def pad(self, batch: list[Encoded], padding_side: Literal["left", "right"]) -> dict[str, Any]:
        """Pad to the longest sample. Returns lists-of-lists plus each sample's left offset."""
        width = max(len(e.input_ids) for e in batch)
        ids, labels, mask, offsets = [], [], [], []
        for e in batch:
            gap = width - len(e.input_ids)
            left = gap if padding_side == "left" else 0
            offsets.append(left)
            pad_ids, pad_labels, pad_mask = [self.pad_id] * gap, [IGNORE_INDEX] * gap, [0] * gap
            body_mask = [1] * len(e.input_ids)
            if padding_side == "left":
                ids.append(pad_ids + e.input_ids)
                labels.append(pad_labels + e.labels)
                mask.append(pad_mask + body_mask)
            else:
                ids.append(e.input_ids + pad_ids)
                labels.append(e.labels + pad_labels)
                mask.append(body_mask + pad_mask)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "offsets": offsets}
