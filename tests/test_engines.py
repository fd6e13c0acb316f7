"""Engines on CPU: a 2-process DDP run (torchrun, gloo) and DeepSpeed ZeRO-2/3 runs end within a small
tolerance of the single-process run with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mmcore.assembly import assemble
from mmcore.run import Run

STAGE = """
[data]
num_workers = 0

[data.datasets.vqa]
type = "synthetic-shapes"
size = 64
image_size = 28
tasks = ["vqa/colour"]

[[stages]]
name = "instruct"
trainable = ["projectors", "llm"]
template = "plain"
lr = 2e-3
batch_size = 4
global_batch_size = 8
max_steps = 4
log_every = 1
engine = "{engine}"
"""


@pytest.fixture(scope="module")
def extensions(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One TORCH_EXTENSIONS_DIR for DeepSpeed's JIT-compiled CPU op (scripts/test.sh keeps it in .venv)."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or str(tmp_path_factory.mktemp("torch-extensions"))


def _run(tiny_model_text: str, folder: Path, engine: str, nproc: int, extensions: str) -> Path:
    manifest = folder / f"{engine}-{nproc}.toml"
    manifest.write_text(tiny_model_text.split("[[stages]]")[0] + STAGE.format(engine=engine))
    run = folder / f"{engine}-{nproc}"
    Run.create(run, assemble(manifest))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": extensions, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mmcore", "train", str(run), "--nproc", str(nproc)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def _close(a: Path, b: Path, atol: float) -> None:
    for name in ("projectors.vision", "llm"):
        x = load_file(str(a / "weights" / f"{name}.safetensors"))
        y = load_file(str(b / "weights" / f"{name}.safetensors"))
        worst = max(float((x[k] - y[k]).abs().max()) for k in x)
        assert worst < atol, f"{name}: max difference {worst:.2e}"


@pytest.fixture(scope="module")
def single(tiny_model_text: str, tmp_path_factory: pytest.TempPathFactory, extensions: str) -> Path:
    return _run(tiny_model_text, tmp_path_factory.mktemp("single"), "single", 1, extensions)


def test_ddp_two_processes_match_single(single: Path, tiny_model_text: str, tmp_path: Path, extensions: str) -> None:
    """`--nproc 2` (DDP over gloo) with the same global batch ends within 1e-4 of one process."""
    _close(single, _run(tiny_model_text, tmp_path, "ddp", 2, extensions), atol=1e-4)


@pytest.mark.parametrize("engine", ["deepspeed-zero2", "deepspeed-zero3"])
def test_deepspeed_two_processes_match_single(engine: str, single: Path, tiny_model_text: str, tmp_path: Path,
                                              extensions: str) -> None:
    """DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU processes ends within 1e-4 of the single-process run."""
    pytest.importorskip("deepspeed")
    _close(single, _run(tiny_model_text, tmp_path, engine, 2, extensions), atol=1e-4)


def test_deepspeed_config_follows_the_stage(tiny_model_text: str) -> None:
    """The generated DeepSpeed config carries the stage's batch, accumulation, clipping and ZeRO stage."""
    from mmcore.manifest import StageSpec
    from mmcore.train._deepspeed import deepspeed_config

    stage = StageSpec(name="s", engine="deepspeed-zero3", batch_size=4, grad_clip=0.5, precision="bf16")
    config = deepspeed_config(stage, 4, 2, 2)
    assert config["train_batch_size"] == 16 and config["gradient_accumulation_steps"] == 2
    assert config["zero_optimization"]["stage"] == 3 and config["bf16"]["enabled"] is True
    assert config["gradient_clipping"] == 0.5
    # a component computing in fp32 (SAM's head: pip SAM's get_dense_pe fails on bf16 weights) keeps every weight
    # fp32: DeepSpeed's bf16 cast is off and the engine runs bf16 autocast instead
    assert deepspeed_config(stage, 4, 2, 2, keep_fp32=True)["bf16"]["enabled"] is False


