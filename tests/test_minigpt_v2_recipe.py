"""MiniGPT-v2's recipe: examples/minigpt-v2-7b.toml counts and stage 3 as minigptv2_finetune.yaml, and the tiny
example training every task tag through its three stages."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Vision-CAIR/MiniGPT-4 d94738a train_configs/minigptv2_finetune.yaml, datasets.<name>: (batch_size, sample_ratio)
FINETUNE_YAML = {
    "multitask_conversation": (2, 50), "llava_conversation": (2, 30), "unnatural_instruction": (1, 10),
    "refvg": (6, 40), "llava_detail": (4, 20), "llava_reason": (4, 80), "flickr_grounded_caption": (2, 80),
    "flickr_CaptionToPhrase": (2, 80), "flickr_ObjectToPhrase": (2, 80), "coco_caption": (6, 10),
    "textcaps_caption": (6, 30), "refcoco": (6, 25), "refcocop": (6, 25), "refcocog": (6, 25), "invrefcoco": (6, 10),
    "invrefcocop": (6, 10), "invrefcocog": (6, 10), "coco_vqa": (6, 15), "ok_vqa": (6, 8), "aok_vqa": (6, 12),
    "gqa": (6, 50), "ocrvqa": (6, 30)}


@pytest.fixture(scope="module")
def recipe() -> object:
    pytest.importorskip("mmcore_plugin_eva")
    from mmcore.assembly import assemble

    return assemble(EXAMPLES / "minigpt-v2-7b.toml")


def test_7b_counts(recipe: object) -> None:
    """On the meta device: EVA-ViT-g at 448 986,975,872 (+ ln_vision 2,816), llama_proj 23,072,768, LoRA r 64 on
    q/v 33,554,432, 56,627,200 trained in every stage, 7,782,021,504 in all (next-systems.md §1.4)."""
    assembly: Any = recipe
    encoder = assembly.model.encoders["vision"]
    assert sum(p.numel() for p in encoder.visual_encoder.parameters()) == 986_975_872
    assert sum(p.numel() for p in encoder.ln_vision.parameters()) == 2_816
    assert assembly.parameters["projectors.vision"] == 23_072_768
    for stage in ("pretrain", "multitask", "finetune"):
        assert assembly.trainable[stage]["llm"] == 33_554_432
        assert sum(assembly.trainable[stage].values()) == 56_627_200
    assert sum(assembly.parameters.values()) + 33_554_432 == 7_782_021_504


def test_stage_3_is_the_finetune_yaml(recipe: object) -> None:
    """Stage 3 holds minigptv2_finetune.yaml's datasets with their batch sizes and ratios, its LoRA, schedule,
    learning rates, weight decay and length (50 × 1000 iterations, 1000 warm-up)."""
    assembly: Any = recipe
    stage = assembly.loaded.manifest.stages[2]
    assert {n: (s.batch_size, s.sample_ratio) for n, s in stage.loaders.items()} == FINETUNE_YAML
    assert stage.mixture == "minigpt-v2" and stage.template == "llama2"
    assert stage.lora is not None and (stage.lora.r, stage.lora.alpha, stage.lora.dropout) == (64, 16, 0.05)
    assert stage.lora.targets == ["q_proj", "v_proj"] and stage.trainable == ["projectors"]
    assert (stage.schedule, stage.lr, stage.min_lr, stage.warmup_lr) == ("linear-warmup-cosine", 1e-5, 1e-6, 1e-6)
    assert stage.max_steps == 50_000 and math.ceil(stage.warmup_ratio * stage.max_steps) == 1000
    assert stage.weight_decay == 0.05 and stage.gradient_checkpointing and assembly.loaded.manifest.seed == 42
    assert assembly.loaded.manifest.model.max_reply_tokens == 1024  # max_txt_len


def test_tiny_example_trains_every_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/minigpt-v2-tiny.toml, cut to a few steps, runs its three stages (the last with LoRA on q/v) on
    synthetic-shapes asked with every task tag — the samples its mixture draws carry all six; every loss is
    finite."""
    pytest.importorskip("mmcore_plugin_eva")
    from mmcore.assembly import assemble
    from mmcore.data import Processor
    from mmcore.run import Run
    from mmcore.train import train

    trained: list[tuple[str, str]] = []  # (task, its tokens as text) of every training sample prepared
    prepare = Processor.prepare

    def recording(self: Processor, sample: Any, template: str, train: bool) -> Any:
        prepared = prepare(self, sample, template, train)
        if train:
            trained.append((sample.task or "", self.tokenizer.decode(prepared.encoded.input_ids)))
        return prepared

    monkeypatch.setattr(Processor, "prepare", recording)

    text = (EXAMPLES / "minigpt-v2-tiny.toml").read_text()
    text = re.sub(r"max_steps = \d+", "max_steps = 6", text).replace("size = 20000", "size = 16")
    text = re.sub(r"batch_size = \d+", "batch_size = 2", text).replace("log_every = 50", "log_every = 1")
    text = text.replace("num_workers = 1", "num_workers = 0").replace('datasets = ["val"]', "datasets = []")
    (tmp_path / "m.toml").write_text(text)
    Run.create(tmp_path / "run", assemble(tmp_path / "m.toml"))
    trainer = train(tmp_path / "run")
    assert any("lora_A" in n for n, _ in trainer.model.llm.named_parameters())
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if s["kind"] == "step"]
    assert len(losses) == 18 and all(math.isfinite(loss) for loss in losses)
    tags = {"caption", "vqa", "refer", "identify", "detection", "grounding"}
    assert {task.split("/")[0] for task, _ in trained} >= tags
    written = {tag for tag in tags for _, text in trained if f"[{tag}]" in text}
    assert written == tags, f"instructions never tagged {tags - written}"

