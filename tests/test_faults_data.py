"""Fault injection, data: every bad record is skipped and counted by reason in training and in eval, never a
crash and never trained on as text. Each test's docstring states the expected outcome."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from mmcore.cli import main


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width × height pixels (a decompression bomb: its data is never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def _record(rid: str, image: Any = "ok.png", question: Any = "<image>\nWhat colour?", answer: Any = "dark",
            task: str = "vqa") -> str:
    return json.dumps({"id": rid, "image": image, "task": task,
                       "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]})


BAD = {  # record id → the reason it is skipped
    "bomb": "oversized-media",  # header claims 10,000 × 10,000 px: above PIL's MAX_IMAGE_PIXELS (a warning there)
    "huge-bomb": "oversized-media",  # 100,000 × 100,000 px: above twice the limit
    "null-value": "malformed-record",
    "object-value": "malformed-record",
    "null-image": "malformed-record",
    "two-placeholders": "placeholder-mismatch",
    "missing": "missing-media",
}


@pytest.fixture
def bad_data(tmp_path: Path) -> Path:
    """6 good records, the records of BAD and one line that is not UTF-8 (14 lines)."""
    from PIL import Image

    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "ok.png")
    _png_header(tmp_path / "bomb.png", 10_000, 10_000)
    _png_header(tmp_path / "huge.png", 100_000, 100_000)
    lines = [_record(f"ok{i}").encode() for i in range(6)]
    lines += [_record("bomb", "bomb.png").encode(), _record("huge-bomb", "huge.png").encode(),
              _record("null-value", answer=None).encode(), _record("object-value", question={"text": "hi"}).encode(),
              _record("null-image", [None]).encode(),
              _record("two-placeholders", question="<image>\nWhat colour? <image>").encode(),
              _record("missing", "nope.png").encode(),
              b'{"id": "latin1", "conversations": [{"from": "human", "value": "caf\xe9"}]}']
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


EXPECTED = {"oversized-media": 2, "malformed-record": 4, "placeholder-mismatch": 1, "missing-media": 1}

PLAN = """
[data]
num_workers = 0
strict = {strict}

[data.datasets.captions]
type = "llava-json"
path = "{path}"
image_folder = "{folder}"

[[stages]]
name = "align"
trainable = ["projectors"]
template = "plain"
datasets = ["captions"]
batch_size = 4
epochs = 2
mixture = "{mixture}"
log_every = 1
"""


def _run(tmp_path: Path, model_text: str, data: Path, mixture: str = "uniform", strict: str = "false") -> Path:
    manifest = tmp_path / f"{mixture}-{strict}.toml"
    manifest.write_text(model_text.split("[[stages]]")[0]
                        + PLAN.format(strict=strict, path=data, folder=data.parent, mixture=mixture))
    run = tmp_path / f"run-{mixture}-{strict}"
    assert main(["assemble", str(manifest), "-o", str(run)]) == 0
    return run


def _skipped(run: Path) -> dict[str, int]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return next(r["skipped"] for r in records if r["kind"] == "stage_end")


def test_bad_records_are_skipped_and_counted_in_training(tmp_path: Path, tiny_model_text: str, bad_data: Path) -> None:
    """Training over every bad record kind finishes; each is skipped and counted by its reason (14 records, two
    epochs: 7 steps of 4 draw every record of the first epoch and most of the second)."""
    run = _run(tmp_path, tiny_model_text, bad_data)
    assert main(["train", str(run)]) == 0
    skipped = _skipped(run)
    assert set(skipped) == set(EXPECTED) and all(EXPECTED[r] <= n <= 2 * EXPECTED[r] for r, n in skipped.items())


def test_bad_records_are_skipped_and_counted_in_eval(tmp_path: Path, tiny_model_text: str, bad_data: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`mmcore eval` over the same file scores the 6 good records and counts the others by reason."""
    run = _run(tmp_path, tiny_model_text, bad_data)
    assert main(["eval", str(run), "--data", str(bad_data), "--max-new-tokens", "2"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())[str(bad_data)]
    assert metrics["samples"] == 6 and metrics["skipped"] == EXPECTED


def test_a_header_claiming_a_huge_image_is_refused_before_decoding(bad_data: Path) -> None:
    """An image whose header claims more than PIL's limit is a SampleError (oversized-media) raised when the
    header is read, before any pixel is decoded."""
    from PIL import Image

    from mmcore.data._processor import _guarded
    from mmcore.errors import SampleError

    with pytest.raises(SampleError, match="refused") as caught, _guarded("bomb", "image"):
        Image.open(bad_data.parent / "bomb.png")  # only the header: decoding would need 300 MB
    assert caught.value.reason == "oversized-media"


def test_text_must_be_text(tmp_path: Path) -> None:
    """A null or an object where text belongs is malformed, never the text 'None' or a dict's repr."""
    from mmcore.builtins.datasets.llava_json import LlavaJson, LlavaJsonConfig
    from mmcore.errors import SampleError
    from mmcore.kinds import BuildContext

    path = tmp_path / "d.jsonl"
    path.write_text(_record("a", answer=None) + "\n" + _record("b", question=["x"]) + "\n")
    dataset = LlavaJson(LlavaJsonConfig(path=str(path)), BuildContext(name="d"))
    for index, what in ((0, "'value' is null, not text"), (1, r'is \["x"\], not text')):
        with pytest.raises(SampleError, match=what):
            dataset[index]


def test_per_task_mixture_with_a_malformed_line_keeps_going(tmp_path: Path, tiny_model_text: str,
                                                            bad_data: Path) -> None:
    """mixture = "per-task" over a file with bad lines builds its order and trains, counting what it skips."""
    run = _run(tmp_path, tiny_model_text, bad_data, mixture="per-task")
    assert main(["train", str(run)]) == 0
    skipped = _skipped(run)
    assert set(skipped) <= set(EXPECTED) and sum(skipped.values()) > 0


def test_per_task_mixture_with_strict_names_the_record(tmp_path: Path, tiny_model_text: str, bad_data: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The same with strict = true stops at the first bad record drawn, naming dataset and record; exit 2."""
    run = _run(tmp_path, tiny_model_text, bad_data, mixture="per-task", strict="true")
    capsys.readouterr()
    assert main(["train", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset 'captions' record" in err[0] and "strict = true" in err[0]


def test_empty_datasets_name_the_dataset_and_its_file(tmp_path: Path, tiny_model_text: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A stage whose dataset file holds no records: one line naming the dataset and its file, exit 2."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    run = _run(tmp_path, tiny_model_text, empty)
    capsys.readouterr()
    assert main(["train", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the stage's datasets are empty" in err[0]
    assert "dataset 'captions'" in err[0] and str(empty) in err[0]


def test_a_json_array_that_is_not_utf8_is_one_line(tmp_path: Path, tiny_model_text: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A .json array file that is not UTF-8 stops with one line naming the file and the byte, exit 2."""
    data = tmp_path / "latin1.json"
    data.write_bytes(b'[{"id": "caf\xe9"}]')
    run = _run(tmp_path, tiny_model_text, data)
    capsys.readouterr()
    assert main(["train", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latin1.json: not UTF-8 text (byte 12)" in err[0]
