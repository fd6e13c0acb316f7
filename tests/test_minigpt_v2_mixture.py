"""MiniGPT-v2's mixture (`mixture = "minigpt-v2"`): every micro-batch is one draw of one dataset, with that dataset's
own batch size, drawn ∝ sample_ratio (upstream `MultiIterLoader`); the draws depend only on the seed, so layouts with
the same world × accumulation train the same model; LAVIS' linear-warmup-cosine schedule."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmcore.assembly import assemble
from mmcore.cli import main
from mmcore.data._mixture import loader_draws, loader_steps, rank_batches
from mmcore.run import Run

LOADERS = {"a": (2, 3.0), "b": (5, 1.0)}


def test_each_draw_is_one_dataset_with_its_own_batch() -> None:
    """A draw takes `batch_size` samples of one dataset; datasets are drawn ∝ sample_ratio."""
    order, bounds = loader_draws({"a": 50, "b": 30}, LOADERS, seed=3, draws=4000)
    draws = [order[bounds[k] : bounds[k + 1]] for k in range(4000)]
    assert all(len({n for n, _ in d}) == 1 and len(d) == LOADERS[d[0][0]][0] for d in draws)
    share = sum(1 for d in draws if d[0][0] == "a") / len(draws)
    assert 0.72 < share < 0.78


def test_draws_depend_only_on_the_seed_and_extend() -> None:
    """The same seed draws the same sequence; a longer run starts with the shorter one's draws."""
    short = loader_draws({"a": 50, "b": 30}, LOADERS, seed=3, draws=40)
    long = loader_draws({"a": 50, "b": 30}, LOADERS, seed=3, draws=90)
    assert long[0][: len(short[0])] == short[0] and long[1][: len(short[1])] == short[1]
    assert loader_draws({"a": 50, "b": 30}, LOADERS, seed=4, draws=40) != short


def test_each_dataset_passes_over_every_sample_before_repeating() -> None:
    """A dataset's draws walk a permutation of it (a fresh one per pass), as a shuffled DataLoader restarts."""
    order, _ = loader_draws({"a": 7, "b": 30}, {"a": (3, 1.0), "b": (1, 1.0)}, seed=0, draws=200)
    a = [i for n, i in order if n == "a"]
    assert sorted(a[:7]) == list(range(7)) and sorted(a[7:14]) == list(range(7))


def test_ranks_share_the_draws_as_one_process_with_accumulation() -> None:
    """Two ranks × 1 micro-batch see, step by step, exactly the draws one process sees with accumulation 2."""
    _, bounds = loader_draws({"a": 50, "b": 30}, LOADERS, seed=1, draws=12)
    one = rank_batches(0, 6, rank=0, world=1, batch=0, accum=2, bounds=bounds)
    two = [rank_batches(0, 6, rank=r, world=2, batch=0, accum=1, bounds=bounds) for r in range(2)]
    for step in range(6):
        assert one[2 * step] == two[0][step] and one[2 * step + 1] == two[1][step]


def test_steps_from_epochs_use_the_expected_batch() -> None:
    """Without max_steps a stage covers `epochs` passes at Σ p·batch_size samples per draw."""
    assert loader_steps({"a": 60, "b": 40}, LOADERS, 1.0, None, draws_per_step=2) == 18  # ⌊100 / (2 × 2.75)⌋
    assert loader_steps({"a": 60, "b": 40}, LOADERS, 1.0, 7, draws_per_step=2) == 7


def test_linear_warmup_cosine_is_lavis_schedule() -> None:
    """schedule = "linear-warmup-cosine" gives LAVIS' LinearWarmupCosineLRScheduler's lr at every step."""
    from mmcore.train._optim import _schedule

    # Vision-CAIR/MiniGPT-4 d94738a minigpt4/common/optims.py run as an oracle (outside the repo):
    # LinearWarmupCosineLRScheduler(init_lr=1e-5, min_lr=1e-6, warmup_start_lr=1e-6, warmup_steps=10,
    # max_epoch=5, iters_per_epoch=20).step(cur_epoch=t // 20, cur_step=t % 20) → lr at t
    upstream = {0: 1e-06, 1: 1.9e-06, 5: 5.5e-06, 9: 9.100000000000001e-06, 10: 9.779754323328192e-06,
                37: 7.287165507856512e-06, 50: 5.5e-06, 99: 1.0022204783542077e-06}
    factor = _schedule("linear-warmup-cosine", warmup=10, total=100, floor=0.1, start=0.1)
    for step, lr in upstream.items():
        assert factor(step) * 1e-5 == pytest.approx(lr, rel=1e-12), step


def test_default_schedules_unchanged_by_min_lr() -> None:
    """min_lr = 0 and warmup_lr = 0 keep transformers' cosine; min_lr floors its decay."""
    from mmcore.train._optim import _schedule

    plain, floored = _schedule("cosine", 2, 10), _schedule("cosine", 2, 10, floor=0.1)
    assert plain(1) == 0.5 and plain(6) == 0.5 * (1 + __import__("math").cos(__import__("math").pi * 0.5))
    assert floored(10) == pytest.approx(0.1) and plain(10) == 0.0


DATA = """
[data]
num_workers = 0

[data.datasets.refer]
type = "synthetic-shapes"
size = 32
image_size = 28
tasks = ["refer"]
box_format = "minigpt"

[data.datasets.vqa]
type = "synthetic-shapes"
size = 32
image_size = 28
tasks = ["vqa/colour"]

[[stages]]
name = "finetune"
trainable = ["projectors", "llm"]
template = "llama2"
mixture = "minigpt-v2"
lr = 2e-3
schedule = "linear-warmup-cosine"
min_lr = 2e-4
warmup_lr = 2e-4
warmup_ratio = 0.25
max_steps = 6
log_every = 1
{extra}

[stages.loaders]
refer = {{ batch_size = 3, sample_ratio = 2 }}
vqa = {{ batch_size = 1 }}
"""


def _manifest(tiny_model_text: str, folder: Path, name: str, extra: str = "") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(tiny_model_text.split("[data.datasets")[0] + DATA.format(extra=extra))
    return path


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {**load_file(str(run / "weights" / "llm.safetensors")),
            **load_file(str(run / "weights" / "projectors.vision.safetensors"))}


def test_two_processes_train_as_one_with_accumulation(tiny_model_text: str, tmp_path: Path) -> None:
    """`--nproc 2` (DDP, gloo) ends within 1e-4 of one process with gradient_accumulation = 2: the same draws per
    step, whichever rank computes them."""
    runs = {}
    for name, nproc, accum in (("one", 1, 2), ("two", 2, 1)):
        manifest = _manifest(tiny_model_text, tmp_path, name, f"gradient_accumulation = {accum}")
        Run.create(tmp_path / name, assemble(manifest))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "mmcore", "train", str(tmp_path / name), "--nproc", str(nproc)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = _weights(tmp_path / name)
    worst = max(float((runs["one"][k] - runs["two"][k]).abs().max()) for k in runs["one"])
    assert worst < 1e-4


def test_resume_from_a_mid_stage_checkpoint_is_exact(tiny_model_text: str, tmp_path: Path) -> None:
    """A run resumed from its step-4 checkpoint ends with exactly the weights of the uninterrupted run."""
    manifest = _manifest(tiny_model_text, tmp_path, "m", "save_every = 2\nkeep_checkpoints = 3")
    Run.create(tmp_path / "run", assemble(manifest))
    assert main(["train", str(tmp_path / "run")]) == 0
    whole = _weights(tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.rmtree(checkpoints / "ckpt-1-0000000")  # the end of the stage
    shutil.rmtree(tmp_path / "run" / "weights")
    (checkpoints / "latest").write_text("ckpt-0-0000004")
    assert main(["train", str(tmp_path / "run")]) == 0
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "resume"] == [4]
    resumed = _weights(tmp_path / "run")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_the_trainer_plans_one_draw_per_micro_batch(tiny_model_text: str, tmp_path: Path) -> None:
    """The trainer cuts the stage into its draws: one dataset per micro-batch, of that dataset's batch size."""
    from mmcore.train._engine import World
    from mmcore.train._trainer import Trainer

    manifest = _manifest(tiny_model_text, tmp_path, "m")
    Run.create(tmp_path / "run", assemble(manifest))
    trainer = Trainer(Run.open(tmp_path / "run"), World(0, 1, torch.device("cpu")))
    stage = trainer.manifest.stages[0]
    data, steps = trainer._order(stage, 0, stage.batch_size)
    bounds = trainer.bounds["finetune"]
    sizes = Counter(bounds[k + 1] - bounds[k] for k in range(steps))
    assert steps == 6 and len(bounds) == 7 and len(data) == bounds[-1]
    assert set(sizes) <= {1, 3} and all(len({n for n, _ in data.order[bounds[k]:bounds[k + 1]]}) == 1
                                        for k in range(steps))


@pytest.mark.parametrize(("extra", "message"), [
    ('global_batch_size = 8', "global_batch_size assumes one batch size"),
    ('group_by_modality_length = true', "group_by_modality_length assumes one batch size"),
])
def test_one_batch_size_keys_are_refused(tiny_model_text: str, tmp_path: Path, extra: str, message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Stage keys that assume one batch size are one assemble error under the MiniGPT-v2 mixture."""
    manifest = _manifest(tiny_model_text, tmp_path, "m", extra)
    assert main(["assemble", str(manifest), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_loaders_name_known_datasets(tiny_model_text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A loader naming no dataset of the stage, or loaders without the mixture, is one line naming the key."""
    manifest = _manifest(tiny_model_text, tmp_path, "m")
    manifest.write_text(manifest.read_text().replace("vqa = {", "vqaa = {"))
    assert main(["assemble", str(manifest), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "loaders.vqaa" in err and "did you mean 'vqa'" in err
    manifest.write_text(manifest.read_text().replace('mixture = "minigpt-v2"', 'mixture = "uniform"'))
    assert main(["assemble", str(manifest), "--dry-run"]) == 2
    assert 'need mixture = "minigpt-v2"' in capsys.readouterr().err

