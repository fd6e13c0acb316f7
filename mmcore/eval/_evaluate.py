"""`mmcore eval`: batched generation over a dataset, metrics per task, a metrics JSON and a PNG sheet."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcore.errors import SampleError
from mmcore.eval._draw import draw_overlays, reference_overlays
from mmcore.eval._heads import HeadScores, free_running, teacher_forced
from mmcore.eval._metrics import box_iou, token_f1, vqa_accuracy, vqa_match
from mmcore.eval._minigpt import grounded_f1, image_size, rec_hit, resample
from mmcore.kinds import Dataset, Sample, Turn
from mmcore.kinds.codec import BoxCodec
from mmcore.pipeline import Pipeline

__all__ = ["ANSWER_FORMATS", "EvalRecord", "evaluate", "summarize", "write_report"]

# LLaVA docs/Evaluation.md (upstream-systems.md §1.9): appended to the question on a new line.
ANSWER_FORMATS = {
    "none": "",  # open-ended (LLaVA-Bench, MM-Vet)
    "short": "Answer the question using a single word or phrase.",  # VQAv2, GQA, VizWiz, TextVQA, POPE
    "choice": "Answer with the option's letter from the given choices directly.",  # MMBench, ScienceQA, SEED
}


@dataclass
class EvalRecord:
    sample_id: str
    task: str
    question: str
    answer: str
    reference: str
    score: float
    image: Any = None
    overlays: list[Any] = field(default_factory=list)  # what the heads predicted for the answer's triggers
    references: list[Any] = field(default_factory=list)  # the sample's reference masks and boxes (with heads)
    # `refer` answers: 0 a box at the first ask, k > 0 a box after k resample rounds, -1 never a box
    retries: int = 0


def _prompt(sample: Sample, answer_format: str = "none") -> Sample:
    """The sample without its last assistant turn (the reference), with the answer-format line appended
    to the last question."""
    turns = list(sample.conversation)
    while turns and turns[-1].role == "assistant":
        turns.pop()
    suffix = ANSWER_FORMATS[answer_format]
    if suffix and turns and not turns[-1].text.rstrip().endswith(suffix):
        turns[-1] = Turn(turns[-1].role, f"{turns[-1].text}\n{suffix}")
    return Sample(sample.id, turns, sample.media, sample.targets, sample.task)


def _score(task: str, answer: str, reference: str, sample: Sample, codec: BoxCodec) -> float:
    from mmcore.builtins.codecs import MiniGPTBoxes

    if task.startswith("vqa") and sample.targets.get("answers"):  # every annotator's answer (VQAv2, OK-VQA)
        return vqa_accuracy(answer, list(sample.targets["answers"]))
    if task.startswith("vqa") or task == "identify":
        return float(vqa_match(answer, reference))
    if task not in ("refer", "detection", "grounding"):
        return token_f1(answer, reference)
    size = image_size((sample.media.get("image") or [None])[0])
    if task == "refer" and sample.targets.get("boxes"):
        if isinstance(codec, MiniGPTBoxes):  # MiniGPT-v2's eval_ref.py: its regex, +1 areas, IoU > 0.5
            return float(bool(rec_hit(answer, sample.targets["boxes"][0], size)))
        predicted = codec.decode(answer, size)
        return float(predicted is not None and box_iou(predicted, tuple(sample.targets["boxes"][0])) >= 0.5)
    if task in ("detection", "grounding"):  # F1 of (phrase, box) pairs at IoU > 0.5
        return grounded_f1(answer, reference, codec, size)
    return token_f1(answer, reference)


def evaluate(pipeline: Pipeline, dataset: Dataset, template: str, codec: BoxCodec, batch_size: int = 8,
             max_new_tokens: int = 32, limit: int | None = None, answer_format: str = "none",
             skipped: Counter[str] | None = None, heads: HeadScores | None = None,
             resample_rounds: int = 0, seed: int = 0) -> list[EvalRecord]:
    """Greedy answers for every sample (batched, left-padded, through the run's processor) scored against
    its last reply. A record that cannot become a sample is skipped and counted by reason in `skipped`.
    `heads` (`HeadScores.of(model)`): also the heads' metrics, teacher-forced and free-running (`_heads.py`).
    A `refer` answer without a box is counted; `resample_rounds` re-asks it (eval_ref.py --resample)."""
    skipped = Counter() if skipped is None else skipped
    processor = pipeline.processor
    indices = range(min(len(dataset), limit or len(dataset)))
    records: list[EvalRecord] = []
    for start in range(0, len(indices), batch_size):
        samples, prepared = [], []
        for index in indices[start : start + batch_size]:
            try:
                sample = dataset[index]
                prepared.append(processor.prepare(_prompt(sample, answer_format), template, train=False))
            except SampleError as err:
                skipped[err.reason] += 1
                continue
            samples.append(sample)
        if not prepared:
            continue
        batch = processor.collate(prepared, train=False).to(pipeline.device)
        drawn: list[list[Any]] = [[] for _ in samples]
        if heads is None:
            new_tokens = pipeline.model.generate(batch, max_new_tokens=max_new_tokens)
        else:
            generated = pipeline.model.generate_with_heads(batch, max_new_tokens=max_new_tokens)
            new_tokens, drawn = generated.tokens, free_running(pipeline, samples, generated.heads, heads)
            teacher_forced(pipeline, samples, template, heads)
        answers = processor.decode(new_tokens, template)
        retries = resample(pipeline, samples, prepared, answers, template, codec, resample_rounds, max_new_tokens,
                           seed)
        for row, (sample, answer) in enumerate(zip(samples, answers, strict=True)):
            reference = sample.conversation[-1].text
            task = sample.task or "caption"
            question = next((t.text for t in reversed(sample.conversation) if t.role == "user"), "")
            image = (sample.media.get("image") or [None])[0]
            records.append(EvalRecord(sample.id, task, question, answer, reference,
                                      _score(task, answer, reference, sample, codec), image, drawn[row],
                                      reference_overlays(sample.targets) if heads is not None else [],
                                      retries[row]))
    return records


def summarize(records: list[EvalRecord], skipped: Counter[str] | None = None) -> dict[str, Any]:
    """Mean score per task and per task family (vqa = VQA accuracy, refer = Prec@0.5, else token F1), and the
    records skipped, by reason."""
    groups: dict[str, list[float]] = {}
    for r in records:
        for key in {r.task, r.task.split("/")[0]}:
            groups.setdefault(key, []).append(r.score)
    summary: dict[str, Any] = {"samples": len(records)}
    if any(r.task == "refer" for r in records):  # eval_ref.py's parse failures: at the first ask, and in the end
        summary["refer_unparsed"] = sum(1 for r in records if r.retries != 0)
        summary["refer_unparsed_final"] = sum(1 for r in records if r.retries < 0)
    if skipped:
        summary["skipped"] = dict(sorted(skipped.items()))
    return {**summary, **{k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}}


def write_report(records: list[EvalRecord], metrics: dict[str, Any], folder: Path, sheet_size: int) -> None:
    """folder/metrics.json, folder/answers.jsonl and folder/samples.png (images with Q, A, reference)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(folder / "answers.jsonl", "w", encoding="utf-8") as handle:
        for r in records:
            line = {"id": r.sample_id, "task": r.task, "question": r.question, "answer": r.answer,
                    "reference": r.reference, "score": r.score}
            if r.overlays:  # what the heads predicted: boxes in pixels, mask areas
                line["boxes"] = [[round(v, 2) for v in o.value] for o in r.overlays if o.kind == "box"]
                line["mask_pixels"] = [int(o.value.sum()) for o in r.overlays if o.kind == "mask"]
            handle.write(json.dumps(line) + "\n")
    shown = [r for r in records if r.image is not None][:sheet_size]
    if shown:
        _sheet(shown, folder / "samples.png")


def _printable(text: str) -> str:
    """An untrained model writes control bytes; the sheet shows them as '?'."""
    return "".join(c if c.isprintable() and ord(c) < 0x2000 else "?" for c in text)


def _sheet(records: list[EvalRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    columns = min(4, len(records))
    rows = (len(records) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, record in zip(axes.flat, records, strict=False):
        image = record.image if hasattr(record.image, "size") else Image.open(record.image)
        if record.overlays or record.references:  # heads: predicted (u-LLaVA's colours) and reference (green)
            small = max(image.size) < 256
            image = draw_overlays(image, record.overlays, record.references, scale=4 if small else 1)
        axis.imshow(image)
        mark = "ok" if record.score >= 0.5 else "wrong"
        question = _printable(record.question.replace("<image>", "").strip())
        answer, reference = _printable(record.answer), _printable(record.reference)
        axis.set_title(f"{question[:40]}\nA: {answer[:30]} ({mark})\nref: {reference[:30]}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
