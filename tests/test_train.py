"""Staged training: loss falls, freezing, LoRA, checkpoints that survive a kill, bad records, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mmcore.assembly import assemble
from mmcore.cli import main
from mmcore.run import Run

DATA = """
[data]
num_workers = 0

[data.datasets.captions]
type = "synthetic-shapes"
size = 64
image_size = 28
tasks = ["caption"]

[data.datasets.vqa]
type = "synthetic-shapes"
size = 64
image_size = 28
tasks = ["vqa/colour"]
"""

STAGES = """
[[stages]]
name = "align"
trainable = ["projectors"]
template = "plain"
datasets = ["captions"]
lr = 3e-3
batch_size = 8
max_steps = {align_steps}
log_every = 1

[[stages]]
name = "instruct"
trainable = {instruct_trainable}
template = "plain"
datasets = ["vqa"]
lr = 3e-3
batch_size = 4
gradient_accumulation = 2
max_steps = {instruct_steps}
log_every = 1
{extra}
"""


def _model_part(tiny_model_text: str) -> str:
    return tiny_model_text.split("[[stages]]")[0]


@pytest.fixture
def make_run(tiny_model_text: str, tmp_path: Path) -> Any:
    """Write a training manifest and assemble it into a run directory."""

    def make(name: str = "run", align_steps: int = 6, instruct_steps: int = 6, extra: str = "",
             data: str = DATA, instruct_trainable: str = '["projectors", "llm"]') -> Path:
        manifest = tmp_path / f"{name}.toml"
        manifest.write_text(_model_part(tiny_model_text) + data +
                            STAGES.format(align_steps=align_steps, instruct_steps=instruct_steps, extra=extra,
                                          instruct_trainable=instruct_trainable))
        run = tmp_path / name
        Run.create(run, assemble(manifest))
        return run

    return make


def _steps(run: Path, stage: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == "step" and r["stage"] == stage]


def test_train_smoke_loss_falls(make_run: Any) -> None:
    """Two stages run in order; the loss falls; logs, plots and final weights are written."""
    run = make_run(align_steps=20, instruct_steps=4)
    assert main(["train", str(run)]) == 0
    losses = [r["loss"] for r in _steps(run, "align")]
    assert len(losses) == 20 and sum(losses[-3:]) < sum(losses[:3])
    assert len(_steps(run, "instruct")) == 4
    assert (run / "plots" / "loss-align.png").stat().st_size > 1000
    assert {p.name for p in (run / "weights").iterdir()} == {"llm.safetensors", "encoders.vision.safetensors",
                                                              "projectors.vision.safetensors", "run.json"}


def test_stage_trains_only_its_components(make_run: Any, tiny_dirs: dict[str, Path]) -> None:
    """A projector-only stage leaves the LLM and the encoder exactly as loaded."""
    run = make_run(align_steps=3, instruct_steps=1, instruct_trainable='["projectors"]')
    assert main(["train", str(run)]) == 0
    original = load_file(str(tiny_dirs["llama"] / "model.safetensors"))
    trained = load_file(str(run / "weights" / "llm.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(trained[f"model.{key}"], original[key])  # the component holds the HF model as .model


def test_per_component_learning_rates(make_run: Any) -> None:
    """lr_per_component gives a component its own rate; biases and norms get no weight decay."""
    from mmcore.train._optim import build_optimizer, set_trainable

    run = make_run(extra='lr_per_component = { projectors = 1e-5 }\nweight_decay = 0.1')
    assembly = assemble(run / "manifest.toml")
    stage = assembly.loaded.manifest.stages[1]
    pipeline_model = assemble(run / "manifest.toml", device="cpu").model
    set_trainable(pipeline_model, assembly.loaded.manifest, stage)
    optimizer, _ = build_optimizer(pipeline_model, assembly.loaded.manifest, stage, 10)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["projectors.vision"]["initial_lr"] == 1e-5 and groups["llm"]["initial_lr"] == 3e-3
    assert groups["llm.no_decay"]["weight_decay"] == 0.0 and groups["llm"]["weight_decay"] == 0.1


def test_lora_stays_in_the_llm_and_reloads(make_run: Any, images: list[Path], tmp_path: Path) -> None:
    """LoRA (peft) touches only the LLM; load() re-applies it; export --merge-lora keeps the answers."""
    import mmcore

    run = make_run(align_steps=1, instruct_steps=3, instruct_trainable='["projectors"]',
                   extra="[stages.lora]\nr = 4\nalpha = 8\ntargets = \"all-linear\"")
    assert main(["train", str(run)]) == 0
    assert json.loads((run / "weights" / "lora.json").read_text())["r"] == 4
    pipeline = mmcore.load(run)
    assert any("lora_A" in n for n, _ in pipeline.model.llm.named_parameters())
    assert not any("lora" in n for n, _ in pipeline.model.encoders.named_parameters())
    question = ["<image>\nWhat colour is the shape?"]
    before = pipeline.answer(question, [{"image": [images[0]]}], template="plain", max_new_tokens=5)
    assert main(["export", str(run), str(tmp_path / "merged"), "--merge-lora"]) == 0
    merged = mmcore.load(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.model.llm.named_parameters())
    assert merged.answer(question, [{"image": [images[0]]}], template="plain", max_new_tokens=5) == before


def _wait_for_checkpoint(run: Path, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        latest = run / "checkpoints" / "latest"
        if latest.exists() and latest.read_text().startswith("ckpt-1-"):
            return
        time.sleep(0.05)
    raise AssertionError("no mid-stage checkpoint appeared")


def test_resume_after_kill_equals_uninterrupted(make_run: Any) -> None:
    """Killed mid-stage and resumed, a CPU run ends with exactly the weights of an uninterrupted run."""
    extra = "save_every = 2"
    whole = make_run("whole", align_steps=2, instruct_steps=24, extra=extra)
    assert main(["train", str(whole)]) == 0
    broken = make_run("broken", align_steps=2, instruct_steps=24, extra=extra)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mmcore", "train", str(broken)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(broken, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (broken / "weights").exists(), "the run finished before it could be killed"
    assert main(["train", str(broken)]) == 0
    resumed = [r for r in _steps(broken, "instruct")]
    assert resumed[-1]["step"] == 24
    for name in ("projectors.vision", "llm"):
        a = load_file(str(whole / "weights" / f"{name}.safetensors"))
        b = load_file(str(broken / "weights" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"


BAD = """
[data]
num_workers = 0
strict = {strict}

[data.datasets.captions]
type = "llava-json"
path = "{path}"
image_folder = "{folder}"

[data.datasets.vqa]
type = "synthetic-shapes"
size = 8
image_size = 28
tasks = ["vqa/colour"]
"""


def _bad_records(folder: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (20, 20), (9, 9, 9)).save(folder / "ok.png")
    (folder / "corrupt.png").write_bytes(b"not a png")
    good = {"id": "ok", "image": "ok.png", "conversations": [{"from": "human", "value": "<image>"},
                                                             {"from": "gpt", "value": "dark"}]}
    lines = [json.dumps({**good, "id": f"ok{i}"}) for i in range(6)]
    lines += [json.dumps({**good, "id": "missing", "image": "nope.png"}),
              json.dumps({**good, "id": "corrupt", "image": "corrupt.png"}),
              json.dumps({**good, "id": "mismatch", "image": ["ok.png", "ok.png"]}),  # 2 images, 1 placeholder
              "{broken json"]
    path = folder / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_records_are_skipped_and_counted(make_run: Any, tmp_path: Path) -> None:
    """Missing/corrupt images, mismatched placeholders and broken lines are skipped and counted by reason."""
    path = _bad_records(tmp_path)
    run = make_run("bad", align_steps=5, instruct_steps=1,
                   data=BAD.format(strict="false", path=path, folder=tmp_path))
    assert main(["train", str(run)]) == 0
    end = next(json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
               if '"stage_end"' in line and '"align"' in line)
    assert set(end["skipped"]) == {"missing-media", "corrupt-media", "placeholder-mismatch", "malformed-record"}


def test_strict_data_stops_naming_the_record(make_run: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With strict = true the run stops at the first bad record, naming dataset and record; exit 2."""
    path = _bad_records(tmp_path)
    run = make_run("strict", align_steps=5, instruct_steps=1,
                   data=BAD.format(strict="true", path=path, folder=tmp_path))
    assert main(["train", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset 'captions' record" in err[0] and "strict = true" in err[0]


def test_global_batch_must_divide(make_run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A global batch that does not split over batch_size × processes is a one-line error."""
    run = make_run(extra="global_batch_size = 7")
    assert main(["train", str(run)]) == 2
    assert "global_batch_size 7" in capsys.readouterr().err


def test_bf16_and_gradient_checkpointing(make_run: Any) -> None:
    """A bf16 stage with gradient checkpointing trains with finite, falling loss."""
    run = make_run(align_steps=1, instruct_steps=8,
                   extra='precision = "bf16"\ngradient_checkpointing = true')
    assert main(["train", str(run)]) == 0
    losses = [r["loss"] for r in _steps(run, "instruct")]
    assert all(loss == loss and loss < 20 for loss in losses) and losses[-1] < losses[0]


def test_tensorboard_without_the_package_is_a_clear_error(make_run: Any, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorboard = true without the tensorboard package says what to install."""
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    run = make_run(align_steps=1, instruct_steps=1, extra="tensorboard = true")
    assert main(["train", str(run)]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err


def test_a_stage_that_skips_everything_stops(make_run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """When no record fits (here: max_length below the vicuna_v1 system prompt) the run stops and says why."""
    run = make_run(align_steps=1, instruct_steps=3)
    text = (run / "manifest.toml").read_text().replace("max_length = 256", "max_length = 100")
    (run / "manifest.toml").write_text(text.replace('template = "plain"\ndatasets = ["vqa"]',
                                                    'template = "vicuna_v1"\ndatasets = ["vqa"]'))
    assert main(["assemble", str(run / "manifest.toml"), "-o", str(run)]) == 0
    assert main(["train", str(run)]) == 2
    err = capsys.readouterr().err
    assert "every record so far was skipped" in err and "over-length" in err


def test_modality_length_grouping_trains(make_run: Any) -> None:
    """A stage with group_by_modality_length (LLaVA's sampler) builds its order and trains."""
    run = make_run(align_steps=1, instruct_steps=2, extra="group_by_modality_length = true")
    assert main(["train", str(run)]) == 0
    assert len(_steps(run, "instruct")) == 2


def test_stage_preprocessing_override(make_run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`[stages.preprocess.vision]` changes the encoder's preprocessing for that stage only (LLaVA-1.5:
    square in pretraining, pad in finetuning)."""
    from mmcore_plugin_clip.encoder import ClipView

    from mmcore.train import train

    seen: list[str] = []
    original = ClipView.__call__

    def spy(self: ClipView, item: Any, modality: str) -> Any:
        seen.append(self.aspect)
        return original(self, item, modality)

    monkeypatch.setattr(ClipView, "__call__", spy)
    run = make_run(align_steps=1, instruct_steps=1,
                   extra='[stages.preprocess.vision]\nimage_aspect_ratio = "square"')
    trainer = train(run)
    assert seen[:8] == ["pad"] * 8 and seen[8:16] == ["square"] * 8
    assert trainer.model.encoders["vision"].config.image_aspect_ratio == "pad"


def test_stage_preprocessing_override_is_checked(make_run: Any) -> None:
    """An unknown encoder or a non-preprocessing option in `[stages.preprocess]` is a manifest error."""
    from mmcore.errors import ManifestError

    with pytest.raises(ManifestError, match=r"preprocess.visoin names encoder 'visoin'.*did you mean 'vision'"):
        make_run(extra='[stages.preprocess.visoin]\nimage_aspect_ratio = "square"')
    with pytest.raises(ManifestError, match=r"\['select_layer'\] cannot change per stage"):
        make_run(name="r2", extra="[stages.preprocess.vision]\nselect_layer = -1")
    with pytest.raises(ManifestError, match="image_aspect_ratio"):
        make_run(name="r3", extra='[stages.preprocess.vision]\nimage_aspect_ratio = "crop"')
