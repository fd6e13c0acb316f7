"""Metrics: VQA accuracy (normalised exact match), caption token F1, box IoU and Prec@0.5."""

from __future__ import annotations

import re
from collections import Counter

from mmcore.kinds.codec import Box

__all__ = ["box_iou", "normalize_answer", "token_f1", "vqa_accuracy", "vqa_match"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")
_NUMBERS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def normalize_answer(text: str) -> str:
    """VQA-style normalisation: lower case, no punctuation or articles, number words as digits."""
    text = _PUNCT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(_NUMBERS.get(word, word) for word in text.split())


def vqa_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The VQA accuracy of one answer against the annotators' answers (VQA's official evaluation, which
    MiniGPT-v2's eval_vqa.py runs for OK-VQA): for each annotator, min(1, matches among the others / 3),
    averaged over the annotators; answers compared after `normalize_answer`."""
    if not answers:
        return 0.0
    given = normalize_answer(prediction)
    hits = [normalize_answer(a) == given for a in answers]
    total = sum(hits)
    return sum(min(1.0, (total - hit) / 3) for hit in hits) / len(answers)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between normalised texts."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
