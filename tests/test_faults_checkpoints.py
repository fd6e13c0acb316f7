"""Fault injection, checkpoints: every damage falls back to the checkpoint before (or stops with one line),
a full disk or a kill mid-checkpoint leaves the last good one, a non-finite loss stops the stage. Each test's
docstring states the expected outcome."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmcore.cli import main

STOPPER = '''
import os
import mmcore

@mmcore.hookimpl
def mmcore_train_step(stage, step, metrics):
    """Interrupt training after `stage:step` (a test's deterministic Ctrl-C)."""
    if os.environ.get("MMCORE_TEST_STOP_AT") == f"{stage}:{step}":
        raise KeyboardInterrupt
'''

PLAN = """
[data]
num_workers = 0

[data.datasets.captions]
type = "synthetic-shapes"
size = 32
image_size = 28
tasks = ["caption"]

[[stages]]
name = "align"
trainable = ["projectors"]
template = "plain"
batch_size = 4
max_steps = 2
log_every = 1

[[stages]]
name = "instruct"
trainable = ["projectors", "llm"]
template = "plain"
batch_size = 4
max_steps = 6
save_every = 2
log_every = 1
lr = {lr}
warmup_ratio = 0
schedule = "constant"
{extra}

[plugins]
files = ["stopper.py"]
"""


def _assemble(folder: Path, model_text: str, name: str = "run", lr: str = "1e-3", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stopper.py").write_text(textwrap.dedent(STOPPER))
    manifest = folder / f"{name}.toml"
    manifest.write_text(model_text.split("[[stages]]")[0] + PLAN.format(lr=lr, extra=extra))
    assert main(["assemble", str(manifest), "-o", str(folder / name)]) == 0
    return folder / name


@pytest.fixture(scope="module")
def runs(tiny_model_text: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`whole`: trained without interruption; `stopped`: interrupted after instruct step 5, holding the
    checkpoints of instruct steps 2 and 4 (keep_checkpoints = 2)."""
    folder = tmp_path_factory.mktemp("faults")
    whole = _assemble(folder, tiny_model_text, "whole")
    assert main(["train", str(whole)]) == 0
    stopped = _assemble(folder, tiny_model_text, "stopped")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMCORE_TEST_STOP_AT", "instruct:5")
        assert main(["train", str(stopped)]) == 130
    return {"whole": whole, "stopped": stopped}


@pytest.fixture
def stopped(runs: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the interrupted run, to damage."""
    return Path(shutil.copytree(runs["stopped"], tmp_path / "stopped"))


def _same_weights(a: Path, b: Path) -> bool:
    for name in ("projectors.vision", "llm"):
        x = load_file(str(a / "weights" / f"{name}.safetensors"))
        y = load_file(str(b / "weights" / f"{name}.safetensors"))
        if not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def _lines(err: str) -> list[str]:
    """stderr without the notice naming the run's local plugin file (stopper.py) before it runs."""
    return [line for line in err.strip().splitlines() if not line.startswith("running local plugin files")]


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


def test_a_checkpoint_lists_its_files_with_size_and_sha256(stopped: Path) -> None:
    """checkpoint.json names the stage and step and lists every file with its size and sha256; only the newest
    keep_checkpoints (2) are kept."""
    import hashlib

    assert _checkpoints(stopped) == ["ckpt-1-0000002", "ckpt-1-0000004"]
    folder = stopped / "checkpoints" / "ckpt-1-0000004"
    listing = json.loads((folder / "checkpoint.json").read_text())
    assert (listing["stage"], listing["step"], listing["optimizer"]) == ("instruct", 4, "torch")
    assert set(listing["files"]) == {"weights/llm.safetensors", "weights/projectors.vision.safetensors",
                                     "optimizer.pt", "rng.pt", "state.json"}
    for rel, info in listing["files"].items():
        data = (folder / rel).read_bytes()
        assert info == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _nan_weights(folder: Path) -> None:
    path = folder / "weights" / "llm.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(path)).items()}, str(path))


def _step_past_the_stage(folder: Path) -> None:
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "step": 99}))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "deleted weights folder": (lambda f: shutil.rmtree(f / "weights"), "weights/llm.safetensors is missing"),
    "NaN-overwritten weights": (_nan_weights, "llm.safetensors does not match its sha256"),
    "deleted optimizer.pt": (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "state.json step past the stage": (_step_past_the_stage, "state.json"),
    "truncated safetensors": (lambda f: _truncate(f / "weights" / "llm.safetensors"), "truncated or replaced"),
    "truncated optimizer.pt": (lambda f: _truncate(f / "optimizer.pt"), "optimizer.pt has"),
    "missing rng.pt": (lambda f: (f / "rng.pt").unlink(), "rng.pt is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(damage: str, stopped: Path, runs: dict[str, Path],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Any damage to the newest checkpoint: a one-line warning names the file, training resumes from the one
    before (the damaged one is kept aside) and ends with exactly the weights of an uninterrupted run."""
    harm, named = DAMAGE[damage]
    harm(stopped / "checkpoints" / "ckpt-1-0000004")
    capsys.readouterr()
    assert main(["train", str(stopped)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and named in warnings[0] and "ckpt-1-0000004" in warnings[0]
    assert "resuming from the checkpoint before it, ckpt-1-0000002" in warnings[0]
    assert (stopped / "checkpoints" / "damaged-ckpt-1-0000004").is_dir()
    assert _same_weights(stopped, runs["whole"])


def test_no_good_checkpoint_is_one_line_and_changes_nothing(stopped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every checkpoint damaged: one line naming each problem, exit 2; nothing is moved, trained or written."""
    for name in ("ckpt-1-0000002", "ckpt-1-0000004"):
        (stopped / "checkpoints" / name / "rng.pt").unlink()
    before = sorted(p.relative_to(stopped).as_posix() for p in stopped.rglob("*"))
    capsys.readouterr()
    assert main(["train", str(stopped)]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error:") and "no checkpoint can be trusted" in err[0]
    assert err[0].count("rng.pt is missing") == 2
    assert sorted(p.relative_to(stopped).as_posix() for p in stopped.rglob("*")) == before


def test_a_latest_pointer_without_checkpoints_is_one_line(stopped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`latest` naming a checkpoint when every checkpoint folder is gone never trains from fresh weights: exit 2."""
    for name in ("ckpt-1-0000002", "ckpt-1-0000004"):
        shutil.rmtree(stopped / "checkpoints" / name)
    capsys.readouterr()
    assert main(["train", str(stopped)]) == 2
    assert "no checkpoint is left" in capsys.readouterr().err


def test_keep_checkpoints_keeps_that_many(tiny_model_text: str, tmp_path: Path) -> None:
    """keep_checkpoints = 3 keeps the three newest checkpoints (stage end included)."""
    run = _assemble(tmp_path, tiny_model_text, extra="keep_checkpoints = 3")
    assert main(["train", str(run)]) == 0
    assert _checkpoints(run) == ["ckpt-1-0000002", "ckpt-1-0000004", "ckpt-2-0000000"]


def test_checkpoints_by_wall_time(tiny_model_text: str, tmp_path: Path) -> None:
    """save_every_minutes (default 30) writes mid-stage checkpoints by wall time: with a limit of a few
    microseconds, one after every step."""
    run = _assemble(tmp_path, tiny_model_text, extra="save_every_minutes = 1e-7\nkeep_checkpoints = 9")
    text = (run / "manifest.toml").read_text().replace("save_every = 2\n", "")
    (run / "manifest.toml").write_text(text)
    assert main(["assemble", str(run / "manifest.toml"), "-o", str(run)]) == 0
    assert main(["train", str(run)]) == 0
    assert _checkpoints(run)[-6:] == [f"ckpt-1-000000{i}" for i in range(1, 6)] + ["ckpt-2-0000000"]


def test_a_half_written_staging_folder_is_removed(stopped: Path, runs: dict[str, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A staging folder a killed process left behind is removed with a note; the resume is unaffected."""
    leftover = stopped / "checkpoints" / ".ckpt-1-0000006.tmp"
    (leftover / "weights").mkdir(parents=True)
    (leftover / "weights" / "llm.safetensors").write_bytes(b"half")
    capsys.readouterr()
    assert main(["train", str(stopped)]) == 0
    assert f"removed {leftover}" in capsys.readouterr().err
    assert not leftover.exists() and _same_weights(stopped, runs["whole"])


def _limited_train(run: Path, limit: int, die: bool) -> subprocess.CompletedProcess[str]:
    """`mmcore train RUN` with files capped at `limit` bytes: EFBIG ("disk full"), or killed by SIGXFSZ
    mid-write when `die` (a kill -9 in the middle of a checkpoint, at a deterministic point)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = ("import signal, sys\n"
            + ("signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n" if die else "")
            + "from mmcore.cli import main\nsys.exit(main(['train', sys.argv[1]]))\n")
    return subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, preexec_fn=cap,
                          timeout=300)


def test_a_full_disk_during_a_checkpoint_is_one_line(tiny_model_text: str, tmp_path: Path) -> None:
    """Out of space while writing a checkpoint (files capped at 150 kB, the LLM's weights need more): one line,
    exit 2; the staging folder is removed and the last good checkpoint (the end of 'align') is intact."""
    run = _assemble(tmp_path, tiny_model_text)
    done = _limited_train(run, 150_000, die=False)
    err = _lines(done.stderr)
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert "could not be written (File too large)" in err[0] and "ckpt-1-0000000 is intact" in err[0]
    assert _checkpoints(run) == ["ckpt-1-0000000"] and not list((run / "checkpoints").glob(".*tmp*"))


def test_a_kill_mid_checkpoint_resumes_from_the_last_good_one(tiny_model_text: str, tmp_path: Path,
                                                              runs: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Killed (SIGXFSZ) while writing a checkpoint: the half-written staging folder stays behind; the next
    `mmcore train` removes it, resumes from the end of 'align' and ends with the uninterrupted run's weights."""
    run = _assemble(tmp_path, tiny_model_text, "whole")
    done = _limited_train(run, 150_000, die=True)
    assert done.returncode == -signal.SIGXFSZ
    assert list((run / "checkpoints").glob(".ckpt-1-0000002.tmp"))
    capsys.readouterr()
    assert main(["train", str(run)]) == 0
    assert "a checkpoint a stopped process left half-written" in capsys.readouterr().err
    assert _same_weights(run, runs["whole"])


def _log(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_non_finite_loss_stops_the_stage(tiny_model_text: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """lr = 1e30 makes step 2's loss non-finite: one line naming the step and the batch's samples, exit 2; the
    last good checkpoint stays the newest and no weights are written."""
    run = _assemble(tmp_path, tiny_model_text, lr="1e30")
    capsys.readouterr()
    assert main(["train", str(run)]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "stage 'instruct' step 2: the loss is not finite" in err[0]
    assert "captions#" in err[0] and "skip_non_finite = true" in err[0]
    assert _checkpoints(run) == ["ckpt-1-0000000"] and not (run / "weights").exists()


def test_skip_non_finite_skips_and_counts(tiny_model_text: str, tmp_path: Path) -> None:
    """With skip_non_finite = true such batches are dropped, counted and logged with their samples; the stage
    ends with finite weights."""
    run = _assemble(tmp_path, tiny_model_text, lr="1e30", extra="skip_non_finite = true")
    assert main(["train", str(run)]) == 0
    end = next(r for r in _log(run) if r["kind"] == "stage_end" and r["stage"] == "instruct")
    assert end["skipped"]["non-finite-loss"] == 5 * 4  # steps 2..6, 4 samples each
    events = [r for r in _log(run) if r["kind"] == "non_finite"]
    assert events[0]["step"] == 2 and len(events[0]["samples"]) == 4
    assert all(torch.isfinite(v).all() for v in load_file(str(run / "weights" / "llm.safetensors")).values())


def test_a_changed_engine_resumes_with_a_fresh_optimizer_and_says_so(stopped: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint without the optimizer state its stage needs: a one-line warning says the optimizer starts
    fresh (never in silence)."""
    folder = stopped / "checkpoints" / "ckpt-1-0000004"
    listing = json.loads((folder / "checkpoint.json").read_text())
    (folder / "checkpoint.json").write_text(json.dumps({**listing, "optimizer": "deepspeed"}))
    capsys.readouterr()
    assert main(["train", str(stopped)]) == 0
    assert "resumes with the trained weights and a fresh optimizer" in capsys.readouterr().err


def test_a_checkpoint_that_no_longer_fits_names_the_component_and_both_shapes(tmp_path: Path) -> None:
    """Loading a checkpoint into a component whose shapes changed: one line naming the component, the key and
    both shapes."""
    from mmcore.errors import MmcoreError
    from mmcore.train._checkpoint import TrainState, load_checkpoint, save_checkpoint

    state = TrainState(stage="s", step=1, steps=2, trained={"projectors.vision": ["weight", "bias"]})
    folder = save_checkpoint(tmp_path, state, {"projectors.vision": torch.nn.Linear(4, 3)})
    with pytest.raises(MmcoreError) as caught:
        load_checkpoint(folder, {"projectors.vision": torch.nn.Linear(5, 3)})
    assert "'projectors.vision' no longer fits it (weight (3, 4) vs (3, 5)" in str(caught.value)
