"""`mmcore import minigpt-v2`: MiniGPT-v2's trainable-only checkpoints (llama_proj + peft-0.2.0 LoRA) load with
the same logits as the same weights put together by hand (timm's EVA, F.linear, peft's own model).

The checkpoint is built as `runner_base.py::_save_checkpoint` writes it (Vision-CAIR/MiniGPT-4): real peft LoRA
(r, α on q_proj / v_proj) whose keys are renamed as peft 0.2.0 named them (no `.default`), under `llama_model.`,
plus `llama_proj.*`, a rotary buffer, the optimizer, the config and the epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mmcore.kinds import Sample, Turn

TOWER = {"embed_dim": 32, "depth": 2, "num_heads": 4}  # an eva_vit_g-shaped tower, narrow; 56 px → 4 × 4 grid
VISION_CONFIG = json.dumps({"config": TOWER, "precision": "fp32"})


def _eva_weights(path: Path) -> dict[str, torch.Tensor]:
    """`eva_vit_g.pth`-style: bare keys, a 2 × 2 position grid (resized to 4 × 4 at load), one block too many."""
    import timm

    torch.manual_seed(11)
    tower = timm.create_model("eva_giant_patch14_224", pretrained=False, num_classes=0, global_pool="", img_size=28,
                              depth=3, mlp_ratio=4.3637, use_post_transformer_norm=False, use_fc_norm=False,
                              embed_dim=32, num_heads=4)
    state = {k: torch.randn(v.shape) * 0.2 for k, v in tower.state_dict().items()}
    torch.save(state, path)
    return state


def _peft_llama(llama_dir: Path) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(12)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                        target_modules=["q_proj", "v_proj"])
    model = get_peft_model(LlamaForCausalLM.from_pretrained(llama_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)  # trained adapters are not zero
    return model.eval()


@pytest.fixture(scope="module")
def minigpt(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A MiniGPT-v2 checkpoint_3.pth over the tiny Llama, its EVA weights and the peft model behind it."""
    root = tmp_path_factory.mktemp("minigpt")
    eva = _eva_weights(root / "eva_vit_g.pth")
    peft_model = _peft_llama(tiny_dirs["llama"])
    lora = {"llama_model." + k.replace(".default", ""): v.clone()  # peft 0.2.0 had no adapter name
            for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert next(iter(lora)).startswith("llama_model.base_model.model.model.layers.0.self_attn.")
    torch.manual_seed(13)
    proj = {"llama_proj.weight": torch.randn(48, 4 * 32) * 0.1, "llama_proj.bias": torch.randn(48) * 0.1}
    buffers = {"llama_model.base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(6)}
    torch.save({"model": {**proj, **lora, **buffers},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
                "config": {"model": {"arch": "minigpt_v2", "image_size": 56, "lora_r": 4, "lora_alpha": 8}},
                "scaler": None, "epoch": 3}, root / "checkpoint_3.pth")
    return {"ckpt": root / "checkpoint_3.pth", "eva": eva, "eva_path": root / "eva_vit_g.pth", "proj": proj,
            "peft": peft_model, "llama": tiny_dirs["llama"], "root": root}


def _by_hand(minigpt: dict[str, Any], batch: Any) -> torch.Tensor:
    """upstream encode_img by hand: timm EVA (+ resized pos_embed), ln_vision (γ 1, β 0), view, llama_proj;
    then peft's model on the spliced embeddings."""
    import timm
    from mmcore_plugin_eva.weights import resize_pos_embed

    tower = timm.create_model("eva_giant_patch14_224", pretrained=False, num_classes=0, global_pool="", img_size=56,
                              depth=2, mlp_ratio=4.3637, use_post_transformer_norm=False, use_fc_norm=False,
                              embed_dim=32, num_heads=4).eval()
    state = {k: v for k, v in minigpt["eva"].items() if not k.startswith("blocks.2.")}
    tower.load_state_dict({**state, "pos_embed": resize_pos_embed(state["pos_embed"], (4, 4), 1)})
    pixels = batch.media["image"].views["encoders.vision"]  # (2, 3, 56, 56)
    with torch.no_grad():
        image = F.layer_norm(tower.forward_features(pixels), (32,), eps=1e-5)[:, 1:]  # (2, 16, 32)
        proj = minigpt["proj"]
        tokens = F.linear(image.reshape(2, 4, 128), proj["llama_proj.weight"], proj["llama_proj.bias"])  # (2, 4, 48)
        embeds = minigpt["peft"].get_input_embeddings()(batch.input_ids)
        where = batch.media_token_index >= 0
        embeds[where] = tokens.reshape(-1, 48)[batch.media_token_index[where]]
        return minigpt["peft"](inputs_embeds=embeds, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids).logits


def test_import_gives_the_logits_of_the_weights_by_hand(minigpt: dict[str, Any], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Imported run == EVA + ln_vision + view + llama_proj + peft LoRA by hand (fp32, 1e-5); llama2 template."""
    from PIL import Image

    from mmcore.cli import main
    from mmcore.pipeline import load

    args = ["import", "minigpt-v2", str(minigpt["ckpt"]), "-o", str(tmp_path / "run"), "--llm", str(minigpt["llama"]),
            "--vision", str(minigpt["eva_path"]), "--vision-config", VISION_CONFIG]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "LoRA r=4 α=8 (the checkpoint's config) on q_proj, v_proj" in err and "ignored 1 buffers" in err
    pipeline = load(tmp_path / "run")
    assert pipeline.template == "llama2" and json.loads((tmp_path / "run/weights/lora.json").read_text())["r"] == 4
    samples = [Sample(id=str(i), conversation=[Turn("user", f"<image>\n{q}")], media={"image": [image]}, task=task)
               for i, (q, image, task) in enumerate([("what is it?", Image.new("RGB", (60, 40), (200, 30, 30)), "vqa"),
                                                     ("where is the red one", Image.new("RGB", (30, 50), (9, 99, 9)),
                                                      "refer")])]
    batch = pipeline.processor.batch(samples, "llama2", train=False)
    with torch.no_grad():
        ours = pipeline.model(batch).logits
    real = batch.attention_mask.bool()
    assert (ours - _by_hand(minigpt, batch))[real].abs().max().item() < 1e-5


def test_peft_020_keys_become_the_llm_lora_keys(tiny_dirs: dict[str, Path]) -> None:
    """`llama_model.base_model.model.<m>.lora_A.weight` → the hf-causal-lm's `model.<m>.lora_A.default.weight`."""
    from mmcore.builtins.hf_llm import HFCausalLM, HFCausalLMConfig
    from mmcore.interop.minigpt_v2 import lora_key
    from mmcore.kinds import BuildContext

    llm = HFCausalLM(HFCausalLMConfig(source=str(tiny_dirs["llama"])), BuildContext(name="llm"))
    llm.apply_lora(r=2, alpha=4, dropout=0.0, targets=["q_proj", "v_proj"])
    key = "llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    assert lora_key(key) == "model.model.layers.1.self_attn.v_proj.lora_B.default.weight" in llm.state_dict()
    assert lora_key(key.replace("lora_B.", "lora_B.default.")) == lora_key(key)  # current peft's keys too
    assert lora_key("llama_proj.weight") is None


def _write(path: Path, obj: Any) -> Path:
    torch.save(obj, path)
    return path


def test_bad_input_is_one_line_and_writes_nothing(minigpt: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Missing file or --llm, an unsafe pickle, a foreign key, no EVA weights, a base of another width: exit 2,
    one `error:` line naming the culprit, no run directory."""
    from mmcore.cli import main

    ckpt, llama, vision = str(minigpt["ckpt"]), str(minigpt["llama"]), str(minigpt["eva_path"])
    saved = torch.load(ckpt, weights_only=True)
    foreign = _write(tmp_path / "foreign.pth", {"model": {**saved["model"], "Qformer.bert.x": torch.zeros(1)}})
    narrow = _write(tmp_path / "narrow.pth", {"model": {**saved["model"], "llama_proj.weight": torch.zeros(40, 128),
                                                        "llama_proj.bias": torch.zeros(40)}})
    unsafe = _write(tmp_path / "unsafe.pth", {"model": {}, "config": Path("x")})
    cases = [([str(tmp_path / "missing.pth"), "--llm", llama, "--vision", vision], "no such file"),
             ([ckpt, "--vision", vision], "Missing option '--llm'"),
             ([str(unsafe), "--llm", llama], "weights_only=True"),
             ([str(foreign), "--llm", llama, "--vision", vision], "Qformer.bert.x"),
             ([ckpt, "--llm", llama], "pass --vision eva_vit_g.pth"),
             ([str(narrow), "--llm", llama, "--vision", vision], "hidden size 48, but the checkpoint's llama_proj"),
             ([ckpt, "--llm", llama, "--vision", vision, "--vision-config", "{"], "--vision-config: not JSON")]
    for args, message in cases:
        assert main(["import", "minigpt-v2", *args, "-o", str(tmp_path / "run")]) == 2, message
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
        assert not (tmp_path / "run").exists()
