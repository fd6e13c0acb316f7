"""One sequence builder for training and generation.

A template's `Piece`s (one per upstream tokenizer call) → token ids, each media placeholder expanded to
exactly the projector's token count → labels from the learned character spans, through the tokenizer's
offsets → padded batches with attention masks, position ids and an index that says which media token
goes where.

Rules: a placeholder/media count mismatch is a `SampleError` at data time; truncation never cuts a
media span (a sample whose media does not fit is an error); a training sample with no learned token
left is an error, never a silently fully-masked sample.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from mmcore.errors import MmcoreError, SampleError
from mmcore.kinds.template import Piece

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


def _overlaps(spans: tuple[tuple[int, int], ...], start: int, end: int) -> bool:
    end = max(end, start + 1)  # a zero-width token sits at its start
    return any(start < b and end > a for a, b in spans)


class SequenceBuilder:
    """Tokenizes pieces with media placeholders; `tokens_per_item[modality]` comes from assembly."""

    def __init__(self, tokenizer: Any, tokens_per_item: dict[str, int], max_length: int,
                 max_reply: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.tokens_per_item = dict(tokens_per_item)
        self.max_length = max_length
        self.max_reply = max_reply  # [model] max_reply_tokens (MiniGPT-v2's max_txt_len)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        names = "|".join(re.escape(placeholder(m)) for m in tokens_per_item)
        self._split = re.compile(f"({names})") if names else None
        self._modality = {placeholder(m): m for m in tokens_per_item}

    def _chunks(self, text: str) -> Iterator[tuple[int, str, str | None]]:
        """(start, text, modality or None) of `text` split at media placeholders; empty text kept."""
        parts = self._split.split(text) if self._split else [text]
        start = 0
        for part in parts:
            yield start, part, self._modality.get(part)
            start += len(part)

    def _call(self, text: str, special: bool, spans: tuple[tuple[int, int], ...], offset: int,
              learn_all: bool) -> tuple[list[int], list[int]]:
        """One tokenizer call → (ids, labels); labels from `spans` (piece coordinates) via offsets."""
        need_offsets = bool(spans) and not learn_all
        try:
            enc = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=need_offsets,
                                 return_special_tokens_mask=True)
        except NotImplementedError:
            raise MmcoreError(f"tokenizer {type(self.tokenizer).__name__} gives no character offsets, which this "
                              f"template needs to find learned spans; use its fast (tokenizers) version") from None
        ids = [int(i) for i in enc["input_ids"]]
        added = enc["special_tokens_mask"]
        if learn_all:
            return ids, [IGNORE_INDEX if a else i for i, a in zip(ids, added, strict=True)]
        if not spans:
            return ids, [IGNORE_INDEX] * len(ids)
        labels = [i if not a and _overlaps(spans, offset + s, offset + e) else IGNORE_INDEX
                  for i, a, (s, e) in zip(ids, added, enc["offset_mapping"], strict=True)]
        return ids, labels

    def _token(self, piece: Piece) -> tuple[list[int], list[int]]:
        tid = self.tokenizer.bos_token_id if piece.token == "bos" else self.tokenizer.eos_token_id
        if tid is None:  # a tokenizer without BOS (GPT-2 style): nothing to insert
            return [], []
        return [int(tid)], [int(tid) if piece.learn else IGNORE_INDEX]

    def encode(self, pieces: list[Piece], media_counts: dict[str, int], sample_id: str,
               train: bool = True) -> Encoded:
        """Pieces → ids/labels/media spans; `train` requires at least one learned token."""
        self._check_modalities(media_counts, sample_id)
        ids: list[int] = []
        labels: list[int] = []
        media: list[tuple[str, int, int]] = []
        for piece in pieces:
            if piece.token is not None:
                piece_ids, piece_labels = self._token(piece)
                ids += piece_ids
                labels += piece_labels
                continue
            spans, first = piece.spans(), True
            for start, text, modality in self._chunks(piece.text):
                if modality is not None:
                    if _overlaps(spans, start, start + len(text)):
                        raise SampleError(f"sample '{sample_id}': {text} appears in an assistant reply; media "
                                          f"placeholders belong in user turns", "placeholder-mismatch")
                    length = self.tokens_per_item[modality]
                    media.append((modality, len(ids), length))
                    ids += [self.pad_id] * length  # Contract: labels of media positions are IGNORE
                    labels += [IGNORE_INDEX] * length
                    continue
                special = piece.special_tokens and first  # BOS kept once (tokenizer_image_token)
                first = False
                if text or special:
                    call_ids, call_labels = self._call(text, special, spans, start, piece.learn is True)
                    ids += call_ids
                    labels += call_labels
        self._check_counts(media, media_counts, sample_id)
        return self._truncate(Encoded(sample_id, ids, labels, media), train)

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
        first = next((i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX), None)
        if self.max_reply is not None and first is not None and len(encoded.input_ids) > first + self.max_reply:
            # MiniGPT-v2 (minigpt_base.py tokenize_conversation): the regressed part — the first reply and every
            # turn after it — is cut to max_txt_len tokens; the first question (with its image) is kept whole
            encoded.input_ids = encoded.input_ids[: first + self.max_reply]
            encoded.labels = encoded.labels[: first + self.max_reply]
        if len(encoded.input_ids) > self.max_length:
            media_end = max((start + length for _, start, length in encoded.media_spans), default=0)
            if media_end > self.max_length:
                raise SampleError(f"sample '{sid}': its media ends at token {media_end}, past max_length "
                                  f"{self.max_length}; raise [model] max_length or shorten the sample", "over-length")
            encoded.input_ids = encoded.input_ids[: self.max_length]
            encoded.labels = encoded.labels[: self.max_length]
        if train and all(label == IGNORE_INDEX for label in encoded.labels):
            raise SampleError(f"sample '{sid}': no learned token within max_length {self.max_length} "
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
