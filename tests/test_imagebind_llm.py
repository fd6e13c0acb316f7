"""ImageBind-LLM in the core: modality fusion, the adapter under LoRA, LLaMA-Adapter bias tuning, gate decay,
and the 7B recipe's counts (upstream-systems.md §4, next-systems.md §2.3)."""
# ruff: noqa: E501  (TOML fixtures keep their inline tables on one line)

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mmcore_plugin_imagebind")
pytest.importorskip("mmcore_plugin_bind_network")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY_BIND = ('architecture = { out_embed_dim = 16, vision_embed_dim = 16, vision_num_blocks = 1, vision_num_heads = 2, '
             'audio_embed_dim = 16, audio_num_blocks = 1, audio_num_heads = 2, text_embed_dim = 8, text_num_blocks = 1, '
             'text_num_heads = 2, depth_embed_dim = 8, depth_num_blocks = 1, depth_num_heads = 2, thermal_embed_dim = 8, '
             'thermal_num_blocks = 1, thermal_num_heads = 2, imu_embed_dim = 8, imu_num_blocks = 1, imu_num_heads = 2 }')


def _manifest(projector: str = "", llm: str = "") -> str:
    return f"""seed = 0
[model.llm]
type = "hf-causal-lm"
tokenizer = "byte-level"
{llm}
config = {{ model_type = "llama", vocab_size = 260, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 512 }}

[model.encoders.bind]
type = "imagebind"
modalities = ["image", "audio"]
{TINY_BIND}

[model.projectors.bind]
type = "bind-network"
hidden_multiplier = 2
{projector}
"""


def _model(tmp_path: Path, projector: str = "", llm: str = "") -> Any:
    from mmcore.assembly import assemble

    path = tmp_path / "m.toml"
    path.write_text(_manifest(projector, llm))
    assembly = assemble(path, device="cpu")
    model = assembly.model.eval()
    with torch.no_grad():  # off zero: gates and prefix, so the adapter changes the logits
        model.projectors["bind"].gates.normal_(0, 0.5)
    return assembly, model


def _batch(assembly: Any, model: Any, media: dict[str, list[Any]], prompt: str) -> Any:
    from mmcore.data import Processor
    from mmcore.kinds import Sample, Turn

    processor = Processor.for_model(model, assembly.max_length, {"alpaca": assembly.template("alpaca")})
    sample = Sample("s", [Turn("user", prompt), Turn("assistant", "red")], media)
    return processor.batch([sample], "alpaca", train=True)


def _tone() -> tuple[np.ndarray, int]:
    t = np.arange(24000) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000


def test_image_and_audio_both_condition_the_adapter(tmp_path: Path) -> None:
    """An image and an audio clip through one encoder give the bind network Σ_m w_m·normalize(f_m) / Σ w."""
    from PIL import Image

    assembly, model = _model(tmp_path, "modality_weights = { image = 3.0, audio = 1.0 }")
    batch = _batch(assembly, model, {"image": [Image.new("RGB", (40, 40), (200, 30, 30))], "audio": [_tone()]},
                   "<image><audio>\nWhat colour?")
    with torch.no_grad():
        model.media_tokens(batch)
        condition = model._conditions["bind"]
        encoder, projector = model.encoders["bind"], model.projectors["bind"]
        image = encoder(batch.media["image"].views["encoders.bind"], "image").pooled
        audio = encoder(batch.media["audio"].views["encoders.bind"], "audio").pooled
        fused = (3.0 * F.normalize(image, dim=-1) + 1.0 * F.normalize(audio, dim=-1)) / (4.0 + 1e-6)
        from mmcore.kinds import Features

        expected = projector(Features(tokens=fused.unsqueeze(1), pooled=fused))
        only_audio = projector(Features(tokens=audio.unsqueeze(1), pooled=audio))
    torch.testing.assert_close(condition, expected)
    assert not torch.allclose(condition, only_audio)


def test_weighted_mean_per_sample() -> None:
    """Fusion per sample: items of a modality averaged, modalities weighted over those the sample has, rows
    without media left out."""
    from mmcore.kinds.projector import weighted_mean

    image = (torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]), torch.tensor([0, 0, 2]))
    audio = (torch.tensor([[4.0, 4.0]]), torch.tensor([2]))
    fused, rows = weighted_mean({"image": image, "audio": audio}, {"image": 1.0, "audio": 3.0}, batch_size=4)
    assert rows.tolist() == [0, 2]
    torch.testing.assert_close(fused[0], torch.tensor([0.5, 0.5]) / (1 + 1e-6))
    torch.testing.assert_close(fused[1], (torch.tensor([2.0, 2.0]) + 3 * torch.tensor([4.0, 4.0])) / (4 + 1e-6))


def test_lora_on_o_proj_sees_the_adapter_term(tmp_path: Path) -> None:
    """With LoRA on the linears (o_proj included), logits equal those after merging LoRA into the weights:
    the LoRA term of o_proj reads the attention output WITH the adapter term (upstream wo(out) + lora_wo(out))."""
    from PIL import Image

    assembly, model = _model(tmp_path)
    batch = _batch(assembly, model, {"image": [Image.new("RGB", (40, 40), (20, 30, 220))], "audio": []},
                   "<image>\nWhat colour?")
    llm = model.llm
    # v_proj left out: the adapter goes through the frozen base wv, so merging a LoRA of wv would change it
    llm.apply_lora(r=4, alpha=4, dropout=0.0, targets=[t for t in llm.lora_target_names() if t != "v_proj"])
    with torch.no_grad():
        for name, param in llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
        with_lora = model(batch).logits
        llm.merge_lora()
        merged = model(batch).logits
    torch.testing.assert_close(with_lora, merged, atol=1e-5, rtol=1e-5)


def test_bias_tuning_layers_zero_init_and_saved(tmp_path: Path) -> None:
    """bias_tuning = "llama-adapter": zero biases on q/o/gate/up/down (not k, v); they change nothing at first;
    `save_pretrained` declares them, and transformers loads the same logits (LoRA merged)."""
    from transformers import AutoModelForCausalLM

    from mmcore.builtins.hf_llm import HFCausalLM, HFCausalLMConfig
    from mmcore.kinds import BuildContext

    tiny = HFCausalLM.tiny_config()
    torch.manual_seed(0)
    plain = HFCausalLM(HFCausalLMConfig.model_validate(tiny), BuildContext(name="llm"))
    torch.manual_seed(0)
    biased = HFCausalLM(HFCausalLMConfig.model_validate({**tiny, "bias_tuning": "llama-adapter"}),
                        BuildContext(name="llm"))
    names = {n.split(".")[-2] for n, _ in biased.model.named_parameters() if n.endswith(".bias")}
    assert names == {"q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    ids = torch.randint(0, 200, (2, 9))
    mask = torch.ones_like(ids)
    positions = mask.cumsum(-1) - 1
    with torch.no_grad():
        torch.testing.assert_close(biased(biased.embed(ids), mask, positions).logits,
                                   plain(plain.embed(ids), mask, positions).logits)
        biased.apply_lora(4, 4, 0.0, biased.lora_target_names())
        for name, param in biased.named_parameters():
            if name.endswith(".bias") or "lora_B" in name:
                param.normal_(0, 0.1)
        ours = biased(biased.embed(ids), mask, positions).logits
    biased.save_pretrained(tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert loaded.config.attention_bias and loaded.config.mlp_bias
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, ours, atol=1e-5, rtol=1e-5)


def test_gates_get_no_weight_decay_unless_upstream_asks(tmp_path: Path) -> None:
    """Adapter gates are not decayed by default; `gate_weight_decay = true` (ImageBind-LLM's quirk) decays them."""
    from mmcore.manifest import StageSpec
    from mmcore.train._optim import build_optimizer, set_trainable

    for flag, decayed in (("", False), ("gate_weight_decay = true", True)):
        assembly, model = _model(tmp_path, flag)
        stage = StageSpec(name="pretrain", trainable=["projectors.bind"], weight_decay=0.05)
        set_trainable(model, assembly.loaded.manifest, stage)
        optimizer, _ = build_optimizer(model, assembly.loaded.manifest, stage, total_steps=10)
        gates = model.projectors["bind"].gates
        group = next(g for g in optimizer.param_groups if any(p is gates for p in g["params"]))
        assert (group["weight_decay"] == 0.05) is decayed
        prefix = model.projectors["bind"].prefix_query.weight
        assert next(g for g in optimizer.param_groups if any(p is prefix for p in g["params"]))["weight_decay"] == 0.05


def test_7b_recipe_counts() -> None:
    """examples/imagebind-llm-7b.toml on the meta device: imagebind_huge, the bind network + prefix + gates,
    and each stage's trainable parameters as upstream's get_trainable_params counts them."""
    from mmcore.assembly import assemble

    assembly = assemble(EXAMPLES / "imagebind-llm-7b.toml")
    assert assembly.parameters["encoders.bind"] == 1_200_781_057
    bind = assembly.model.projectors["bind"]
    assert sum(p.numel() for n, p in bind.named_parameters() if n not in ("gates", "prefix_query.weight")) == 608_190_464
    assert bind.prefix_query.weight.numel() == 131_072 and bind.gates.numel() == 1_024
    assert sum(assembly.trainable["pretrain"].values()) == 608_322_560
    assert sum(assembly.trainable["finetune"].values()) == 41_340_928


def test_tiny_example_trains_on_image_and_audio(tmp_path: Path) -> None:
    """examples/imagebind-llm-tiny.toml, cut to a few steps, trains both stages on image, audio and image + audio
    questions: the bind network and the LLM's biases move, every loss is finite."""
    import json

    from mmcore.assembly import assemble
    from mmcore.run import Run
    from mmcore.train import train

    text = (EXAMPLES / "imagebind-llm-tiny.toml").read_text()
    text = text.replace("size = 6000", "size = 8").replace("max_steps = 700", "max_steps = 3")
    text = text.replace("max_steps = 300", "max_steps = 2").replace("batch_size = 16", "batch_size = 4")
    text = text.replace("log_every = 50", "log_every = 1").replace("num_workers = 1", "num_workers = 0").replace('datasets = ["val"]', "datasets = []")
    (tmp_path / "m.toml").write_text(text)
    Run.create(tmp_path / "run", assemble(tmp_path / "m.toml"))
    trainer = train(tmp_path / "run")
    model = trainer.model
    assert model.projectors["bind"].gates.abs().sum() > 0  # zero-initialised, moved by pretraining
    assert any(p.abs().sum() > 0 for n, p in model.llm.named_parameters() if n.endswith("q_proj.base_layer.bias"))
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert len(steps) == 5 and all(np.isfinite(s["loss"]) for s in steps)
