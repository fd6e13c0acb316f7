"""MiniGPT-v2's evaluation rules: REC Prec@0.5 as `eval_scripts/eval_ref.py` computes it (its answer regex, parse
failures counted and optionally re-asked as its `--resample`), box-set F1 for `detection` / `grounding`, and
`multi_select` multiple choice (candidates ranked by per-sample loss, `minigpt4/models/minigpt_base.py`).

Upstream: Vision-CAIR/MiniGPT-4 d94738a. Values are pinned in tests/test_minigpt_v2_eval.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmcore.kinds import Sample, Turn
from mmcore.kinds.codec import Box, BoxCodec

__all__ = ["ANSWER_PATTERN", "evaluate_choices", "grounded_f1", "image_size", "multi_select", "parses",
           "per_sample_loss", "rec_hit", "resample"]

ANSWER_PATTERN = re.compile(r"\{<\d{1,3}><\d{1,3}><\d{1,3}><\d{1,3}>\}")  # eval_ref.py
_GROUNDED = re.compile(r"<p>(.*?)</p>\s*((?:\{<\d{1,3}><\d{1,3}><\d{1,3}><\d{1,3}>\}(?:<delim>)?)+)")


def _clean(answer: str) -> str:
    """eval_ref.py: answer.replace("<unk>", "").replace(" ", "").strip()."""
    return answer.replace("<unk>", "").replace(" ", "").strip()


def parses(answer: str, codec: BoxCodec) -> bool:
    """Whether a `refer` answer counts as a box: MiniGPT boxes by eval_ref.py's `re.match` (at the start, after
    cleaning), any other codec by its decode."""
    from mmcore.builtins.codecs import MiniGPTBoxes

    if isinstance(codec, MiniGPTBoxes):
        return ANSWER_PATTERN.match(_clean(answer)) is not None
    return codec.decode(answer, (1, 1)) is not None


def _iou_inclusive(a: Box | list[float], b: Box | list[float]) -> float:
    """eval_utils.computeIoU: pixel-inclusive areas (+1 on each side)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union


def rec_hit(answer: str, target: list[float], size: tuple[int, int], res: float = 100.0) -> bool | None:
    """eval_ref.py for one answer: None when it does not parse; else its first four integers scaled by
    width / res and height / res, IoU (computeIoU, +1 areas) with the target xyxy box **strictly** above 0.5."""
    cleaned = _clean(answer)
    if ANSWER_PATTERN.match(cleaned) is None:
        return None
    numbers = [int(n) for n in re.findall(r"\d+", cleaned)]
    width, height = size
    predicted = [numbers[0] / res * width, numbers[1] / res * height, numbers[2] / res * width,
                 numbers[3] / res * height]
    return _iou_inclusive(predicted, target) > 0.5


def _pairs(text: str, codec: BoxCodec, size: tuple[int, int]) -> list[tuple[str, Box]]:
    """(phrase, box) of every "<p>phrase</p> {box}<delim>{box}" in a grounded answer (demo_v2.py's format)."""
    pairs = []
    for phrase, boxes in _GROUNDED.findall(text):
        for part in boxes.split("<delim>"):
            box = codec.decode(part, size)
            if box is not None:
                pairs.append((" ".join(phrase.lower().split()), box))
    return pairs


def grounded_f1(answer: str, reference: str, codec: BoxCodec, size: tuple[int, int]) -> float:
    """`detection` / `grounding`: F1 of the answer's (phrase, box) pairs against the reference's, a pair matching
    an unmatched reference pair of the same phrase with IoU > 0.5 (greedy, in order)."""
    from mmcore.eval._metrics import box_iou

    predicted, expected = _pairs(answer, codec, size), _pairs(reference, codec, size)
    if not predicted or not expected:
        return float(not predicted and not expected)
    free, hits = list(expected), 0
    for phrase, box in predicted:
        match = next((e for e in free if e[0] == phrase and box_iou(box, e[1]) > 0.5), None)
        if match is not None:
            free.remove(match)
            hits += 1
    precision, recall = hits / len(predicted), hits / len(expected)
    return 0.0 if not hits else 2 * precision * recall / (precision + recall)


def resample(pipeline: Any, samples: list[Sample], prepared: list[Any], answers: list[str], template: str,
             codec: BoxCodec, rounds: int, max_new_tokens: int, seed: int = 0) -> list[int]:
    """eval_ref.py `--resample`: re-ask the `refer` samples whose answer does not parse, up to `rounds` times, and
    keep the first answer that does (`answers` is updated in place). Upstream re-asks greedily in a batch of only
    the failures (other padding); mmcore's greedy answers do not depend on the batch, so a retry samples (top-p 0.9,
    temperature 1: upstream `generate`'s defaults), seeded. Returns per sample 0 (parsed at once), the round that
    gave a box, or -1 (none did)."""
    retries = [-1 if sample.task == "refer" and not parses(answer, codec) else 0
               for sample, answer in zip(samples, answers, strict=True)]
    for attempt in range(1, rounds + 1):
        todo = [row for row, state in enumerate(retries) if state < 0]
        if not todo:
            break
        torch.manual_seed(seed * 1000 + attempt)
        batch = pipeline.processor.collate([prepared[row] for row in todo], train=False).to(pipeline.device)
        tokens = pipeline.model.generate(batch, max_new_tokens=max_new_tokens, do_sample=True, top_p=0.9,
                                         temperature=1.0)
        for row, answer in zip(todo, pipeline.processor.decode(tokens, template), strict=True):
            answers[row] = answer
            retries[row] = attempt if parses(answer, codec) else -1
    return retries


def image_size(image: Any) -> tuple[int, int]:
    """(width, height) of a PIL image, an (H, W, …) array, or an image file (its header only); (1, 1) otherwise."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        with Image.open(image) as opened:
            return opened.size
    if hasattr(image, "width") and hasattr(image, "height"):
        return int(image.width), int(image.height)
    shape = getattr(image, "shape", None)
    return (int(shape[1]), int(shape[0])) if shape is not None and len(shape) >= 2 else (1, 1)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) minigpt4/models/modeling_llama.py with reduction="none": token cross-entropy over the shifted (B, L−1)
    positions, ignored positions counting 0, **averaged over all L−1 positions** (the batch's padded length, not the
    sample's answer length) — `loss.view(B, -1).mean(1)`."""
    shift_logits = logits[:, :-1, :].float()  # (B, L-1, V)
    token = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), labels[:, 1:].reshape(-1),
                            reduction="none", ignore_index=-100)
    return token.view(logits.shape[0], -1).mean(1)


def _without_reply(sample: Sample) -> list[Turn]:
    turns = list(sample.conversation)
    if turns and turns[-1].role == "assistant":
        turns.pop()
    return turns


def multi_select(pipeline: Any, samples: list[Sample], candidates: list[list[str]], template: str) -> list[list[int]]:
    """minigpt_base.multi_select: for candidate index c, one forward of every sample with its c-th candidate as the
    answer; per-sample losses (B, C); candidates past a sample's own count (padded with "none", as eval_vqa.py pads
    IconQA's) get 9999; each row's candidate indices by rising loss (`argsort`)."""
    width = max(len(c) for c in candidates)
    columns = []
    for c in range(width):
        prepared = []
        for sample, options in zip(samples, candidates, strict=True):
            turns = _without_reply(sample)
            turns.append(Turn("assistant", options[c] if c < len(options) else "none"))
            prepared.append(pipeline.processor.prepare(Sample(sample.id, turns, sample.media, {}, sample.task),
                                                       template, train=True))
        batch = pipeline.processor.collate(prepared, train=True).to(pipeline.device)
        with torch.no_grad():
            columns.append(per_sample_loss(pipeline.model(batch).logits, batch.labels).reshape(-1, 1))
    losses = torch.cat(columns, dim=-1)  # (B, C)
    for row, options in enumerate(candidates):
        losses[row, len(options):] = 9999
    return torch.argsort(losses, dim=-1).tolist()


def evaluate_choices(pipeline: Any, dataset: Any, template: str, batch_size: int = 8, limit: int | None = None,
                     skipped: Any = None) -> list[Any]:
    """`[eval] mode = "multi-choice"`: each sample's answer is the candidate `multi_select` ranks first — its
    `targets["choices"]`, else every distinct reference answer of its task in the evaluated samples (a closed
    answer list, as LAVIS ranks VQA answers) — scored 1 when it is the reference."""
    from collections import Counter

    from mmcore.errors import SampleError
    from mmcore.eval._evaluate import EvalRecord

    skipped = Counter() if skipped is None else skipped
    samples = []
    for index in range(min(len(dataset), limit or len(dataset))):
        try:
            sample = dataset[index]
            pipeline.processor.prepare(sample, template, train=True)  # over-length, bad media: skipped, counted
        except SampleError as err:
            skipped[err.reason] += 1
            continue
        samples.append(sample)
    answers: dict[str, set[str]] = {}
    for sample in samples:
        answers.setdefault(sample.task or "", set()).add(sample.conversation[-1].text)
    records = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        options = [list(s.targets.get("choices") or sorted(answers[s.task or ""])) for s in chunk]
        for sample, choices, ranks in zip(chunk, options, multi_select(pipeline, chunk, options, template),
                                          strict=True):
            answer, reference = choices[ranks[0]], sample.conversation[-1].text
            question = next((t.text for t in reversed(sample.conversation) if t.role == "user"), "")
            image = (sample.media.get("image") or [None])[0]
            records.append(EvalRecord(sample.id, sample.task or "caption", question, answer, reference,
                                      float(answer.strip() == reference.strip()), image))
    return records
