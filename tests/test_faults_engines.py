"""Fault injection, engines and machines: a DeepSpeed run killed with -9 resumes to the uninterrupted weights,
two "machines" train like one process, and a rank that dies or hangs stops the others with one line within a
bounded time. Each test's docstring states the expected outcome."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mmcore.cli import main

HANG = '''
import os
import time
import mmcore

@mmcore.hookimpl
def mmcore_train_step(stage, step, metrics):
    """MMCORE_TEST_HANG_AT=RANK:STEP:FILE: that rank writes its pid to FILE after STEP, then hangs."""
    rule = os.environ.get("MMCORE_TEST_HANG_AT")
    if rule:
        rank, at, marker = rule.split(":", 2)
        if os.environ.get("RANK", "0") == rank and step == int(at):
            with open(marker, "w") as handle:
                handle.write(str(os.getpid()))
            time.sleep(600)
'''

PLAN = """
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
datasets = ["vqa"]
lr = 2e-3
batch_size = 4
global_batch_size = 8
max_steps = {steps}
save_every = 2
log_every = 1
engine = "{engine}"

[plugins]
files = ["hang.py"]
"""


@pytest.fixture(scope="module")
def extensions(tmp_path_factory: pytest.TempPathFactory) -> str:
    return os.environ.get("TORCH_EXTENSIONS_DIR") or str(tmp_path_factory.mktemp("torch-extensions"))


def _run(folder: Path, model_text: str, name: str, engine: str = "single", steps: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hang.py").write_text(textwrap.dedent(HANG))
    manifest = folder / f"{name}.toml"
    manifest.write_text(model_text.split("[[stages]]")[0] + PLAN.format(engine=engine, steps=steps))
    assert main(["assemble", str(manifest), "-o", str(folder / name)]) == 0
    return folder / name


def _env(extensions: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "TORCH_EXTENSIONS_DIR": extensions, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _train(run: Path, extensions: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmcore", "train", str(run), *args], env=_env(extensions, **env),
                          capture_output=True, text=True, timeout=600)


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {n: load_file(str(run / "weights" / f"{n}.safetensors")) for n in ("projectors.vision", "llm")}


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


def _free_port() -> int:
    from mmcore.train._launch import _free_port

    return _free_port()


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_deepspeed_killed_mid_stage_resumes_to_the_uninterrupted_weights(tiny_model_text: str, tmp_path: Path,
                                                                         extensions: str) -> None:
    """A DeepSpeed ZeRO-2 stage on 2 CPU ranks, killed with -9 (every process) after step 5 and resumed through
    the deepspeed launcher's per-machine entry (what a hostfile run starts on each of 2 machines), ends with
    exactly the weights of the uninterrupted run."""
    pytest.importorskip("deepspeed")
    whole = _run(tmp_path, tiny_model_text, "whole", "deepspeed-zero2", steps=8)
    done = _train(whole, extensions, "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    broken = _run(tmp_path, tiny_model_text, "broken", "deepspeed-zero2", steps=8)
    marker = tmp_path / "hung"
    process = subprocess.Popen([sys.executable, "-m", "mmcore", "train", str(broken), "--nproc", "2"],
                               env=_env(extensions, MMCORE_TEST_HANG_AT=f"0:5:{marker}"), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(marker, process)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks, as a machine crash would
    process.wait()
    assert (broken / "checkpoints" / "latest").read_text() == "ckpt-0-0000004" and not (broken / "weights").exists()
    port, hosts = _free_port(), {"machine-a": [0], "machine-b": [0]}
    world = base64.urlsafe_b64encode(json.dumps(hosts).encode()).decode()
    nodes = [subprocess.Popen([sys.executable, "-m", "deepspeed.launcher.launch", f"--world_info={world}",
                               f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}", "--module",
                               "mmcore", "train", str(broken)], env=_env(extensions), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for node in nodes:
        assert node.wait(timeout=600) == 0, node.communicate()[1][-3000:]
    a, b = _weights(whole), _weights(broken)
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), f"{name} differs after the resume"


def test_two_machines_train_like_one_process(tiny_model_text: str, tmp_path: Path, extensions: str) -> None:
    """`mmcore train RUN --nnodes 2 --node-rank R --master-addr 127.0.0.1 --master-port P` on 2 "machines" of
    1 process each (torchrun's rendezvous) ends within 1e-4 of the single-process run."""
    single = _run(tmp_path, tiny_model_text, "single")
    assert main(["train", str(single)]) == 0
    nodes_run = _run(tmp_path, tiny_model_text, "nodes")
    port = str(_free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "mmcore", "train", str(nodes_run), "--nnodes", "2", "--node-rank",
                               str(rank), "--master-addr", "127.0.0.1", "--master-port", port],
                              env=_env(extensions), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for node in nodes:
        assert node.wait(timeout=600) == 0, node.communicate()[1][-3000:]
    a, b = _weights(single), _weights(nodes_run)
    worst = max(float((a[n][k] - b[n][k]).abs().max()) for n in a for k in a[n])
    assert worst < 1e-4, f"max difference {worst:.2e}"


def test_a_rank_killed_stops_the_others_with_one_line(tiny_model_text: str, tmp_path: Path, extensions: str) -> None:
    """Rank 1 killed with -9 mid-stage: within 120 s the launcher exits 2 with one line naming rank 1 and
    SIGKILL (no traceback); the last checkpoint is kept."""
    run = _run(tmp_path, tiny_model_text, "run")
    marker = tmp_path / "hung"
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "mmcore", "train", str(run), "--nproc", "2"],
                               env=_env(extensions, MMCORE_TEST_HANG_AT=f"1:3:{marker}"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    os.kill(_wait_for(marker, process), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and time.monotonic() - start < 300
    errors = _errors(stderr)
    assert len(errors) == 1 and "rank 1" in errors[0] and "SIGKILL" in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert (run / "checkpoints" / "latest").read_text() == "ckpt-0-0000002"


def test_a_rank_that_hangs_stops_the_others_after_the_timeout(tiny_model_text: str, tmp_path: Path,
                                                              extensions: str) -> None:
    """Rank 1 hangs mid-stage: rank 0's next collective gives up after MMCORE_DIST_TIMEOUT (5 s) and the run
    stops with one line naming rank 1 and the timeout — never a hang."""
    run = _run(tmp_path, tiny_model_text, "run")
    marker = tmp_path / "hung"
    process = subprocess.Popen([sys.executable, "-m", "mmcore", "train", str(run), "--nproc", "2"],
                               env=_env(extensions, MMCORE_TEST_HANG_AT=f"1:3:{marker}", MMCORE_DIST_TIMEOUT="5"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(marker, process)
    hung = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and time.monotonic() - hung < 60
    errors = _errors(stderr)
    assert len(errors) == 1 and "rank 1" in errors[0] and "the limit is 5 s" in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr


def test_non_finite_batches_are_skipped_alike_on_every_rank(tiny_model_text: str, tmp_path: Path,
                                                             extensions: str) -> None:
    """DDP on 2 ranks with lr = 1e30 and skip_non_finite = true: every rank drops the same batches (no hang, no
    divergence), the run ends and counts them."""
    run = _run(tmp_path, tiny_model_text, "run", steps=3)
    text = (run / "manifest.toml").read_text().replace("lr = 2e-3", "lr = 1e30\nwarmup_ratio = 0\nschedule = "
                                                        "\"constant\"\nskip_non_finite = true")
    (run / "manifest.toml").write_text(text)
    assert main(["assemble", str(run / "manifest.toml"), "-o", str(run)]) == 0
    done = _train(run, extensions, "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    end = next(r for r in records if r["kind"] == "stage_end")
    assert end["skipped"] == {"non-finite-loss": 2 * 8}  # steps 2 and 3, global batch 8


def test_srun_tasks_become_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `srun` (one task per device, no torchrun) SLURM's task ids become RANK / WORLD_SIZE / LOCAL_RANK;
    without MASTER_ADDR it is one line saying what to export."""
    from mmcore.errors import MmcoreError
    from mmcore.train._engine import slurm_env

    job: dict[str, Any] = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}
    assert slurm_env({**job, "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}) == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert slurm_env({**job, "RANK": "0"}) == {}  # torchrun inside srun sets its own
    with pytest.raises(MmcoreError, match="export MASTER_ADDR="):
        slurm_env(job)


@pytest.mark.parametrize(("args", "message"), [
    (["--nnodes", "2", "--master-port", "1234"], "pass --master-addr"),
    (["--nnodes", "2", "--node-rank", "2", "--master-addr", "h"], "--node-rank 2: must be 0 … 1"),
])
def test_bad_multi_machine_options_are_one_line(args: list[str], message: str, tiny_model_text: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Several machines without a rendezvous address, or a node rank out of range: one line, exit 2."""
    run = _run(tmp_path, tiny_model_text, "run")
    capsys.readouterr()
    assert main(["train", str(run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_the_rank_that_died_is_named_before_the_ranks_torchrun_stopped(tmp_path: Path) -> None:
    """torchrun records the ranks it stopped with SIGTERM in the same second as the rank that died: the one line
    names the rank killed with SIGKILL whatever the rank order; a SIGTERM alone is still named."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from mmcore.train._launch import root_cause

    def failure(rank: int, exitcode: int) -> ProcessFailure:
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(tmp_path / "none"))

    for killed in (0, 1):
        stopped = 1 - killed
        line = root_cause({killed: failure(killed, -signal.SIGKILL), stopped: failure(stopped, -signal.SIGTERM)},
                          tmp_path)
        assert line is not None and line.startswith(f"rank {killed} (pid {100 + killed})") and "SIGKILL" in line
    alone = root_cause({1: failure(1, -signal.SIGTERM)}, tmp_path)
    assert alone is not None and alone.startswith("rank 1") and "SIGTERM" in alone
