"""MiniGPT-v2's evaluation: REC Prec@0.5 as eval_ref.py scores it (regex, +1 areas, IoU > 0.5), parse failures
counted and re-asked (--resample), box-set F1 for detection / grounding, multi_select multiple choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.builtins.codecs import HoneybeeBoxes, MiniGPTBoxes
from mmcore.eval._minigpt import grounded_f1, multi_select, parses, per_sample_loss, rec_hit
from mmcore.kinds import BuildContext, ComponentConfig

MINIGPT = MiniGPTBoxes(ComponentConfig(), BuildContext(name="codec"))

# eval_scripts/eval_ref.py lines 65-71 (answer filter) and 95-126 (scoring) with eval_utils.computeIoU, run on
# these answers (MiniGPT-4 d94738a, outside the repo): (answer, gt xywh in a 640×480 image, kept?, counted hits)
EVAL_REF = [
    ("{<10><20><50><60>}", [64.0, 96.0, 256.0, 192.0], True, 1),
    ("{<10> <20><50><60>}", [64.0, 96.0, 256.0, 192.0], True, 1),
    ("<unk>{<10><20><50><60>}", [64.0, 96.0, 256.0, 192.0], True, 1),
    ("box {<10><20><50><60>}", [64.0, 96.0, 256.0, 192.0], False, 0),
    ("{<0><0><50><50>}", [0.0, 0.0, 159.8, 240.0], True, 1),  # +1 areas: 160.8 / 321 > 0.5 (159.8 / 320 is not)
    ("{<0><0><50><50>}", [0.0, 0.0, 159.5, 240.0], True, 0),  # exactly 0.5: not above it
    ("{<0><0><50><50>}", [0.0, 0.0, 160.5, 240.0], True, 1),
    ("{<1000><0><50><50>}", [0.0, 0.0, 225.0, 240.0], False, 0),
    ("{<5><5><95><95>}", [10.0, 10.0, 600.0, 450.0], True, 1),
]


@pytest.mark.parametrize(("answer", "xywh", "kept", "hits"), EVAL_REF)
def test_rec_scoring_is_eval_ref(answer: str, xywh: list[float], kept: bool, hits: int) -> None:
    """An answer parses exactly when eval_ref.py keeps it, and hits exactly when eval_ref.py counts it."""
    x, y, w, h = xywh
    hit = rec_hit(answer, [x, y, x + w, y + h], (640, 480))
    assert (hit is not None) == kept == parses(answer, MINIGPT)
    assert int(bool(hit)) == hits


def test_per_sample_loss_is_upstream_reduction_none() -> None:
    """Per-sample loss = token CE summed over the answer, divided by the batch's padded length − 1, as
    minigpt4/models/modeling_llama.py (lines 87-99, reduction="none") computes on the same tensors."""
    logits = torch.randn(2, 6, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, -100, 3, 7, 2, -100], [-100, 5, 1, 2, -100, -100]])
    assert per_sample_loss(logits, labels).tolist() == pytest.approx([1.1319010257720947, 2.173612117767334],
                                                                      rel=1e-6)


def test_multi_select_ranks_by_loss_with_padded_candidates_last(tiny_pipeline: Any) -> None:
    """multi_select returns each sample's candidate indices by rising per-sample loss; candidates past a sample's
    count (eval_vqa.py pads them with "none") rank last (9999)."""
    from mmcore.kinds import Sample, Turn

    samples = [Sample(f"s{i}", [Turn("user", "Say a colour."), Turn("assistant", "red")], task="vqa")
               for i in range(2)]
    candidates = [["red", "green", "blue"], ["green", "red"]]
    ranks = multi_select(tiny_pipeline, samples, candidates, "plain")
    losses = []
    for c in range(3):  # the same forwards by hand: one batch per candidate index
        prepared = [tiny_pipeline.processor.prepare(
            Sample(s.id, [s.conversation[0], Turn("assistant", opts[c] if c < len(opts) else "none")]), "plain",
            train=True) for s, opts in zip(samples, candidates, strict=True)]
        batch = tiny_pipeline.processor.collate(prepared, train=True)
        with torch.no_grad():
            losses.append(per_sample_loss(tiny_pipeline.model(batch).logits, batch.labels))
    table = torch.stack(losses, dim=1)
    table[1, 2] = 9999
    assert ranks == torch.argsort(table, dim=-1).tolist() and ranks[1][-1] == 2


def test_grounded_f1_matches_phrase_and_box() -> None:
    """detection / grounding: a predicted (phrase, box) pair counts when an unmatched reference pair has the same
    phrase and IoU > 0.5; F1 over the pairs."""
    reference = "<p>circle</p> {<10><10><40><40>}<delim>{<60><60><90><90>}"
    assert grounded_f1(reference, reference, MINIGPT, (64, 64)) == 1.0
    assert grounded_f1("<p>circle</p> {<10><10><40><40>}", reference, MINIGPT, (64, 64)) == pytest.approx(2 / 3)
    assert grounded_f1("<p>square</p> {<10><10><40><40>}", reference, MINIGPT, (64, 64)) == 0.0
    assert grounded_f1("no boxes", reference, MINIGPT, (64, 64)) == 0.0


def test_other_codecs_parse_by_their_decode() -> None:
    """With Honeybee boxes a `refer` answer parses when the codec finds a box anywhere in it."""
    honeybee = HoneybeeBoxes(HoneybeeBoxes.Config(), BuildContext(name="codec"))
    assert parses("it is [0.1,0.2,0.3,0.4].", honeybee) and not parses("{<1><2><3><4>}", honeybee)


EVAL = """
[data.datasets.refer]
type = "synthetic-shapes"
split = "val"
size = 3
image_size = 28
tasks = ["refer", "vqa/colour", "identify", "detection"]
box_format = "minigpt"

[eval]
datasets = ["refer"]
template = "llama2"
box_codec = "minigpt"
max_new_tokens = 6
{extra}
"""


def _run(tiny_model_text: str, tmp_path: Path, extra: str = "") -> Path:
    from mmcore.assembly import assemble
    from mmcore.run import Run

    manifest = tmp_path / "m.toml"
    manifest.write_text(tiny_model_text.split("[data.datasets")[0] + EVAL.format(extra=extra))
    Run.create(tmp_path / "run", assemble(manifest))
    return tmp_path / "run"


def test_unparsed_boxes_are_counted_and_resampled(tiny_model_text: str, tmp_path: Path) -> None:
    """An untrained model writes no boxes: every refer answer is counted unparsed; `resample` re-asks each (sampled)
    and reports how many still hold none; every sample is scored (a miss stays a miss)."""
    import json

    from mmcore.eval import evaluate_run

    run = _run(tiny_model_text, tmp_path, "resample = 2")
    metrics = evaluate_run(run)["refer"]
    assert metrics["samples"] == 12 and metrics["refer_unparsed"] == 3 and metrics["refer_unparsed_final"] <= 3
    assert {"refer", "vqa", "identify", "detection"} <= set(metrics)
    answers = [json.loads(line) for line in (run / "eval" / "refer" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 12


def test_multi_choice_mode_picks_a_candidate(tiny_model_text: str, tmp_path: Path) -> None:
    """`[eval] mode = "multi-choice"` answers with one of the task's reference answers (the closed answer list) and
    scores 1 exactly when it is the sample's own."""
    import json

    from mmcore.eval import evaluate_run

    run = _run(tiny_model_text, tmp_path, 'mode = "multi-choice"')
    metrics = evaluate_run(run)["refer"]
    answers = [json.loads(line) for line in (run / "eval" / "refer" / "answers.jsonl").read_text().splitlines()]
    by_task: dict[str, set[str]] = {}
    for line in answers:
        by_task.setdefault(line["task"], set()).add(line["reference"])
    for line in answers:
        assert line["answer"] in by_task[line["task"]]
        assert line["score"] == float(line["answer"] == line["reference"])
    assert metrics["samples"] == 12


def test_resample_keeps_the_first_answer_that_parses() -> None:
    """`resample` re-asks only the `refer` answers that do not parse, in a batch of just those, round after round;
    an answer that parses replaces the old one and records its round; one that never does keeps -1; other tasks
    are never re-asked. (The model and processor are stand-ins at the edge: what they answer is scripted.)"""
    from types import SimpleNamespace

    from mmcore.eval._minigpt import resample
    from mmcore.kinds import Sample, Turn

    scripted = [["{<5><5><9><9>}", "still none", "nope"], ["no", "{<0><0><1><1>}"], ["never"]]  # rounds 1, 2, 3
    asked: list[list[str]] = []

    class Processor:
        def collate(self, prepared: list[str], train: bool) -> Any:
            asked.append(list(prepared))
            return SimpleNamespace(to=lambda device: len(prepared))

        def decode(self, tokens: int, template: str) -> list[str]:
            return scripted[len(asked) - 1][:tokens]

    model = SimpleNamespace(generate=lambda batch, **options: batch)
    pipeline = SimpleNamespace(processor=Processor(), model=model, device="cpu")
    tasks = ["refer", "refer", "refer", "vqa", "refer"]
    samples = [Sample(str(i), [Turn("user", "q")], task=t) for i, t in enumerate(tasks)]
    answers = ["{<1><2><3><4>}", "none", "nothing", "blue", "no box"]
    rounds = resample(pipeline, samples, [f"p{i}" for i in range(5)], answers, "llama2", MINIGPT, 3, 8)
    assert asked == [["p1", "p2", "p4"], ["p2", "p4"], ["p2"]]
    assert rounds == [0, 1, -1, 0, 2]
    assert answers == ["{<1><2><3><4>}", "{<5><5><9><9>}", "never", "blue", "{<0><0><1><1>}"]


def test_vqa_accuracy_over_annotators_answers() -> None:
    """VQA's accuracy (MiniGPT-v2's OK-VQA eval): per annotator min(1, matches among the other nine / 3), averaged —
    4 of 10 saying "red" give 1.0, 3 give 0.9 (7 × 1 + 3 × 2/3 over 10), 2 give 0.6, 1 gives 0.3, none 0."""
    from mmcore.eval._metrics import vqa_accuracy

    for count, expected in ((4, 1.0), (3, 0.9), (2, 0.6), (1, 0.3), (0, 0.0)):
        answers = ["red"] * count + ["blue"] * (10 - count)
        assert vqa_accuracy("Red.", answers) == pytest.approx(expected)


def test_vqa_records_keep_every_annotators_answer(tmp_path: Path) -> None:
    """coco_vqa / ok_vqa / aok_vqa samples carry the annotators' answers, so eval scores VQA accuracy with them."""
    import json

    from mmcore.builtins.datasets.minigpt_v2 import MiniGPTv2Data, MiniGPTv2DataConfig
    from mmcore.eval._evaluate import _score
    from mmcore.kinds import BuildContext

    answers = ["tennis"] * 2 + ["golf"] * 8
    (tmp_path / "ann.json").write_text(json.dumps([{"question": "What sport?", "answer": answers,
                                                    "image": "train2014/COCO_train2014_7.jpg"}]))
    data = MiniGPTv2Data(MiniGPTv2DataConfig(format="ok_vqa", path="ann.json", image_folder="."),
                         BuildContext(name="okvqa", base_dir=tmp_path))
    sample = data[0]
    assert sample.targets["answers"] == answers
    assert _score("vqa", "tennis", "golf", sample, MINIGPT) == pytest.approx(0.6)
