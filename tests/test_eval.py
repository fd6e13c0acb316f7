"""Evaluation: metrics, box codecs, batched answers equal to batch size 1, reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mmcore.builtins.codecs import HoneybeeBoxes, MiniGPTBoxes
from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
from mmcore.eval import box_iou, evaluate, normalize_answer, summarize, token_f1, vqa_match
from mmcore.kinds import BuildContext, ComponentConfig


def test_vqa_normalisation() -> None:
    """Case, punctuation, articles and number words do not change a VQA match."""
    assert normalize_answer("The Red.") == "red"
    assert vqa_match("Two", "2") and not vqa_match("red", "blue")


def test_token_f1() -> None:
    """Token F1 rewards overlap: identical 1.0, disjoint 0.0, partial in between."""
    assert token_f1("a red circle", "a red circle.") == 1.0
    assert token_f1("blue square", "red circle") == 0.0
    assert 0.0 < token_f1("red square", "red circle") < 1.0


def test_box_codecs_are_the_upstream_formats() -> None:
    """Honeybee writes [x1,y1,x2,y2] with 3 decimals; MiniGPT-v2 {<x1><y1><x2><y2>} in 0–100."""
    ctx = BuildContext(name="c")
    honeybee, minigpt = HoneybeeBoxes(HoneybeeBoxes.Config(), ctx), MiniGPTBoxes(ComponentConfig(), ctx)
    assert honeybee.encode((10, 20, 30, 40), (100, 50)) == "[0.100,0.400,0.300,0.800]"
    assert minigpt.encode((10, 20, 30, 40), (100, 50)) == "{<10><40><30><80>}"
    assert minigpt.decode("there {<10><40><30><80>} it is", (100, 50)) == (10.0, 20.0, 30.0, 40.0)
    assert honeybee.decode("no box here", (100, 50)) is None


def test_prec_at_half_uses_iou() -> None:
    """IoU of equal boxes is 1, of disjoint boxes 0."""
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and box_iou((0, 0, 1, 1), (5, 5, 6, 6)) == 0.0


def test_batched_eval_equals_batch_size_one(tiny_pipeline: Any) -> None:
    """Evaluating with batch 8 gives exactly the answers of batch 1."""
    data = SyntheticShapes(ShapesConfig(split="val", size=4, image_size=28, tasks=["vqa/colour", "refer"]),
                           BuildContext(name="val"))
    codec = HoneybeeBoxes(HoneybeeBoxes.Config(), BuildContext(name="c"))
    batched = evaluate(tiny_pipeline, data, "vicuna_v1", codec, batch_size=8, max_new_tokens=6)
    single = evaluate(tiny_pipeline, data, "vicuna_v1", codec, batch_size=1, max_new_tokens=6)
    assert [r.answer for r in batched] == [r.answer for r in single]
    assert summarize(batched)["samples"] == 8 and "refer" in summarize(batched)


def test_answer_format_prompts_and_batch_8(tiny_pipeline: Any) -> None:
    """LLaVA's answer-format lines follow the question; with them, batch 8 answers exactly as batch 1."""
    from mmcore.eval._evaluate import ANSWER_FORMATS, _prompt
    from mmcore.kinds import Sample, Turn

    sample = Sample("s", [Turn("user", "<image>\nWhat colour?"), Turn("assistant", "red")], {"image": []})
    assert _prompt(sample, "short").conversation[-1].text == ("<image>\nWhat colour?\nAnswer the question using "
                                                              "a single word or phrase.")
    assert _prompt(sample, "choice").conversation[-1].text.endswith(
        "\nAnswer with the option's letter from the given choices directly.")
    assert _prompt(sample, "none").conversation == sample.conversation[:1] and ANSWER_FORMATS["none"] == ""
    data = SyntheticShapes(ShapesConfig(split="val", size=12, image_size=28, tasks=["vqa/colour", "vqa/shape"]),
                           BuildContext(name="val"))
    codec = HoneybeeBoxes(HoneybeeBoxes.Config(), BuildContext(name="c"))
    batched = evaluate(tiny_pipeline, data, "vicuna_v1", codec, batch_size=8, max_new_tokens=5, answer_format="short")
    single = evaluate(tiny_pipeline, data, "vicuna_v1", codec, batch_size=1, max_new_tokens=5, answer_format="short")
    assert len(batched) == 24 and [r.answer for r in batched] == [r.answer for r in single]


def test_eval_cli_writes_reports(tiny_pipeline: Any, tiny_model_text: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`mmcore eval RUN --data NAME` writes metrics.json, answers.jsonl and a PNG sheet; a bad name exits 2."""
    from mmcore.assembly import assemble
    from mmcore.cli import main
    from mmcore.run import Run

    manifest = tmp_path / "m.toml"
    manifest.write_text(tiny_model_text + '\n[data.datasets.val]\ntype = "synthetic-shapes"\nsplit = "val"\n'
                        'size = 3\nimage_size = 28\ntasks = ["vqa/shape"]\n')
    Run.create(tmp_path / "run", assemble(manifest))
    assert main(["eval", str(tmp_path / "run"), "--data", "val", "--max-new-tokens", "4"]) == 0
    report = tmp_path / "run" / "eval" / "val"
    assert (report / "metrics.json").exists() and (report / "samples.png").stat().st_size > 1000
    assert len((report / "answers.jsonl").read_text().splitlines()) == 3
    assert main(["eval", str(tmp_path / "run"), "--data", "vall"]) == 2
    assert "did you mean 'val'" in capsys.readouterr().err


def test_eval_limit_never_overwrites_full_metrics(tiny_model_text: str, tmp_path: Path) -> None:
    """`--limit N` writes NAME.limitN/ and metrics.limitN.json beside the full evaluation's files."""
    from mmcore.assembly import assemble
    from mmcore.cli import main
    from mmcore.run import Run

    manifest = tmp_path / "m.toml"
    manifest.write_text(tiny_model_text + '\n[data.datasets.val]\ntype = "synthetic-shapes"\nsplit = "val"\n'
                        'size = 4\nimage_size = 28\ntasks = ["vqa/shape"]\n')
    run = Run.create(tmp_path / "run", assemble(manifest)).root
    assert main(["eval", str(run), "--data", "val", "--max-new-tokens", "2"]) == 0
    full = (run / "eval" / "metrics.json").read_text()
    assert main(["eval", str(run), "--data", "val", "--max-new-tokens", "2", "--limit", "2"]) == 0
    assert (run / "eval" / "metrics.json").read_text() == full
    assert json.loads((run / "eval" / "metrics.limit2.json").read_text())["val"]["samples"] == 2
    assert len((run / "eval" / "val.limit2" / "answers.jsonl").read_text().splitlines()) == 2


def test_eval_data_file_with_image_folder_counts_bad_records(tiny_model_text: str, tmp_path: Path) -> None:
    """`--data FILE --image-folder DIR` reads images from DIR; a record that cannot be read is skipped and
    counted by reason, never the end of the evaluation."""
    from PIL import Image

    from mmcore.assembly import assemble
    from mmcore.cli import main
    from mmcore.run import Run

    images = tmp_path / "pictures"
    images.mkdir()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(images / "red.png")
    record = {"image": "red.png", "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                    {"from": "gpt", "value": "red"}]}
    data = tmp_path / "questions.jsonl"
    data.write_text("\n".join(json.dumps({**record, "id": i}) for i in range(2)) + "\n" +
                    json.dumps({**record, "id": "gone", "image": "missing.png"}) + "\n")
    manifest = tmp_path / "m.toml"
    manifest.write_text(tiny_model_text)
    run = Run.create(tmp_path / "run", assemble(manifest)).root
    assert main(["eval", str(run), "--data", str(data), "--image-folder", str(images), "--max-new-tokens", "2"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())[str(data)]
    assert metrics["samples"] == 2 and metrics["skipped"] == {"missing-media": 1}
