"""Interop: transformers' LlavaForConditionalGeneration both ways, LLaVA's checkpoint layouts, safe pickles."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.kinds import Sample, Turn

QUESTIONS = ["<image>\nwhat?", "<image>\ndescribe the colour of this thing in detail", "<image>\nhi",
             "<image>\nwhere is the square in it, please tell me", "<image>\nand the circle?"]


@pytest.fixture(scope="module")
def hf_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlavaForConditionalGeneration built by transformers and saved with save_pretrained."""
    from mmcore.testing import save_tiny_hf_llava

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
              "image_size": 28, "patch_size": 14}
    text = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 256}
    return save_tiny_hf_llava(tmp_path_factory.mktemp("hf-llava") / "llava", vision, text, image_tokens=4, seed=1)


def _random_images(count: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (28 + 6 * i, 28, 3), dtype=np.uint8)) for i in range(count)]


def _compare(pipeline: Any, hf: Any) -> None:
    """Same inputs → logits within 1e-5, and identical greedy batched generation (left padding, mixed lengths)."""
    samples = [Sample(id=str(i), conversation=[Turn("user", q)], media={"image": [im]})
               for i, (q, im) in enumerate(zip(QUESTIONS, _random_images(len(QUESTIONS)), strict=True))]
    batch = pipeline.processor.batch(samples, "vicuna_v1", train=False)
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # mixed prompt lengths
    ids = batch.input_ids.clone()
    ids[batch.media_token_index >= 0] = hf.config.image_token_id  # transformers marks image positions by id
    pixels = batch.media["image"].views["encoders.vision"]
    with torch.no_grad():
        ours = pipeline.model(batch).logits
        theirs = hf(input_ids=ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    pixel_values=pixels).logits
    real = batch.attention_mask.bool()
    assert (ours - theirs[..., : ours.shape[-1]])[real].abs().max().item() < 1e-5
    ours_new = pipeline.model.generate(batch, max_new_tokens=10)
    theirs_new = hf.generate(input_ids=ids, attention_mask=batch.attention_mask, pixel_values=pixels,
                             max_new_tokens=10, do_sample=False, pad_token_id=pipeline.tokenizer.pad_token_id,
                             eos_token_id=pipeline.tokenizer.eos_token_id)[:, ids.shape[1]:]
    assert torch.equal(ours_new, theirs_new)


def test_import_hf_llava_matches_transformers(hf_llava_dir: Path, tmp_path: Path) -> None:
    """`mmcore import hf-llava` → a run whose logits and greedy batched generation equal transformers'."""
    from transformers import LlavaForConditionalGeneration

    from mmcore.assembly import assemble
    from mmcore.cli import main
    from mmcore.pipeline import load

    assert main(["import", "hf-llava", str(hf_llava_dir), "-o", str(tmp_path / "run")]) == 0
    pipeline = load(tmp_path / "run")
    assert pipeline.model.encoders["vision"].config.select_layer == -2
    hf = LlavaForConditionalGeneration.from_pretrained(hf_llava_dir).eval()
    _compare(pipeline, hf)
    # the manifest names every part, so training (which starts from the manifest) starts from them too
    fresh = assemble(tmp_path / "run" / "manifest.toml", device="cpu").model
    assert torch.equal(fresh.projectors["vision"].layers[2].weight, hf.model.multi_modal_projector.linear_2.weight)


def test_export_hf_llava_loads_in_transformers(tiny_pipeline: Any, tiny_model_text: str, tmp_path: Path) -> None:
    """`mmcore export --format hf-llava` of a native run (no <image> token yet): transformers loads it and
    agrees on logits and generation; its processor expands <image> to the projector's token count."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmcore.assembly import assemble
    from mmcore.cli import main
    from mmcore.pipeline import load
    from mmcore.run import Run

    manifest = tmp_path / "tiny.toml"
    manifest.write_text(tiny_model_text)
    Run.create(tmp_path / "run", assemble(manifest))
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--format", "hf-llava"]) == 0
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    pipeline = load(tmp_path / "run")
    assert hf.config.image_token_id == len(pipeline.tokenizer)  # added after the byte-level vocabulary
    _compare(pipeline, hf)
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    encoded = processor(images=_random_images(1)[0], text="USER: <image>\nhi ASSISTANT:", return_tensors="pt")
    assert int((encoded["input_ids"] == hf.config.image_token_id).sum()) == pipeline.model.tokens_per_item["image"]


def test_hf_llava_round_trip(hf_llava_dir: Path, tmp_path: Path) -> None:
    """import then export gives back the same tensors under the same names."""
    from safetensors.torch import load_file

    from mmcore.interop import export_hf_llava, import_hf_llava

    export_hf_llava(import_hf_llava(hf_llava_dir, tmp_path / "run"), tmp_path / "back")
    before, after = load_file(hf_llava_dir / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hf_llava_errors_are_one_line(hf_llava_dir: Path, tmp_path: Path, tiny_dirs: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A missing folder, a non-Llava folder and an existing output are exit-2 one-liners; nothing is left over."""
    from mmcore.cli import main

    assert main(["import", "hf-llava", str(tmp_path / "nope"), "-o", str(tmp_path / "r")]) == 2
    assert main(["import", "hf-llava", str(tiny_dirs["llama"]), "-o", str(tmp_path / "r")]) == 2
    assert "not 'llava'" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["import", "hf-llava", str(hf_llava_dir), "-o", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    from mmcore.assembly import assemble
    from mmcore.run import Run
    from mmcore.testing import tiny_manifest

    (tmp_path / "taken" / "linear.toml").write_text(tiny_manifest('type = "linear"'))
    Run.create(tmp_path / "taken" / "run", assemble(tmp_path / "taken" / "linear.toml"))
    assert main(["export", str(tmp_path / "taken" / "run"), str(tmp_path / "hf"), "--format", "hf-llava"]) == 2
    assert "use type = \"mlp\" with depth = 2" in capsys.readouterr().err and not (tmp_path / "hf").exists()


# --- LLaVA's own layouts ---------------------------------------------------------------------------

def _llava_config(tiny_dirs: dict[str, Path], **extra: Any) -> dict[str, Any]:
    """LLaVA's config.json: the Llama config plus its mm_* keys (upstream-systems.md §1.8)."""
    config = json.loads((tiny_dirs["llama"] / "config.json").read_text())
    config.update(model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"],
                  mm_vision_tower=str(tiny_dirs["clip"]), mm_hidden_size=32, mm_projector_type="mlp2x_gelu",
                  mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_patch_merge_type="flat",
                  image_aspect_ratio="pad", tokenizer_model_max_length=256, use_mm_proj=True, **extra)
    return config


def _projector_state(prefix: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {f"{prefix}mm_projector.0.weight": torch.randn(48, 32), f"{prefix}mm_projector.0.bias": torch.randn(48),
            f"{prefix}mm_projector.2.weight": torch.randn(48, 48), f"{prefix}mm_projector.2.bias": torch.randn(48)}


def _assert_projector(pipeline: Any, state: dict[str, torch.Tensor]) -> None:
    layers = pipeline.model.projectors["vision"].layers
    for index in (0, 2):
        key = next(k for k in state if k.endswith(f"mm_projector.{index}.weight"))
        assert torch.equal(layers[index].weight, state[key])


def test_import_llava_pretrain_projector(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A pretrain run's mm_projector.bin (`model.mm_projector.0.weight` …) lands in the projector."""
    from mmcore.cli import main
    from mmcore.pipeline import load

    src = tmp_path / "llava-pretrain"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(_llava_config(tiny_dirs, tune_mm_mlp_adapter=True)))
    state = _projector_state("model.")
    torch.save(state, src / "mm_projector.bin")
    assert main(["import", "llava", str(src), "-o", str(tmp_path / "r0")]) == 2  # needs --llm
    assert main(["import", "llava", str(src), "-o", str(tmp_path / "run"), "--llm", str(tiny_dirs["llama"])]) == 0
    pipeline = load(tmp_path / "run")
    _assert_projector(pipeline, state)
    assert pipeline.model.encoders["vision"].config.image_aspect_ratio == "pad"


def test_manifest_weights_key_loads_mm_projector_bin(tiny_model_text: str, tmp_path: Path) -> None:
    """`weights = "mm_projector.bin"` on the projector (LLaVA's --pretrain_mm_mlp_adapter) loads it at
    assembly; a missing file fails already on the meta device."""
    from mmcore.assembly import assemble
    from mmcore.errors import ManifestError

    state = _projector_state("model.")
    torch.save(state, tmp_path / "mm_projector.bin")
    text = tiny_model_text.replace('depth = 2', 'depth = 2\nweights = "mm_projector.bin"')
    (tmp_path / "m.toml").write_text(text)
    model = assemble(tmp_path / "m.toml", device="cpu").model
    assert torch.equal(model.projectors["vision"].layers[2].bias, state["model.mm_projector.2.bias"])
    (tmp_path / "bad.toml").write_text(text.replace("mm_projector.bin", "missing.bin"))
    with pytest.raises(ManifestError, match=r"missing\.bin: no such file"):
        assemble(tmp_path / "bad.toml")


def test_import_llava_lora_run_and_merge(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A LoRA run (peft adapter_model + non_lora_trainables.bin) loads with the base LLM and equals peft's
    merged model; `export --merge-lora` folds it in with the same outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from mmcore.cli import main
    from mmcore.pipeline import load

    torch.manual_seed(4)
    base = LlamaForCausalLM.from_pretrained(tiny_dirs["llama"])
    targets = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]  # find_all_linear_names
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.05))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)  # trained adapters are not zero
    src = tmp_path / "llava-lora"
    peft_model.save_pretrained(src, safe_serialization=False)  # adapter_model.bin, as LLaVA's peft wrote it
    (src / "config.json").write_text(json.dumps(_llava_config(tiny_dirs)))
    state = _projector_state("base_model.model.model.")
    torch.save(state, src / "non_lora_trainables.bin")
    peft_model.eval()
    ids = torch.tensor([[1, 40, 50, 60, 70, 80]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits

    assert main(["import", "llava", str(src), "-o", str(tmp_path / "run"), "--llm", str(tiny_dirs["llama"])]) == 0
    pipeline = load(tmp_path / "run")
    _assert_projector(pipeline, state)
    with torch.no_grad():
        got = pipeline.model.llm.model(input_ids=ids).logits
    assert (got - expected).abs().max().item() < 1e-5
    assert main(["train", str(tmp_path / "run")]) == 2  # no stages; and never overwrites the imported adapters
    manifest = tmp_path / "run" / "manifest.toml"
    manifest.write_text(manifest.read_text() + '\n[[stages]]\nname = "more"\ntrainable = ["projectors"]\n'
                        '[data.datasets.shapes]\ntype = "synthetic-shapes"\nsize = 2\n')
    before = (tmp_path / "run" / "weights" / "llm.safetensors").read_bytes()
    assert main(["train", str(tmp_path / "run")]) == 2  # the edit is detected, not used
    assert main(["assemble", str(manifest), "-o", str(tmp_path / "run"), "--force"]) == 0
    assert main(["train", str(tmp_path / "run")]) == 2  # the imported adapters would be replaced
    assert (tmp_path / "run" / "weights" / "llm.safetensors").read_bytes() == before
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "merged"), "--merge-lora"]) == 0
    merged = load(tmp_path / "merged")
    assert merged.model.llm.lora_config is None
    with torch.no_grad():
        assert (merged.model.llm.model(input_ids=ids).logits - expected).abs().max().item() < 1e-5


def test_import_llava_full_finetune(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A full finetune's pytorch_model.bin (Llama + mm_projector + a stray vision tower) is split into the
    LLM and the projector; the vision tower comes from mm_vision_tower."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from mmcore.interop import import_llava
    from mmcore.pipeline import load

    llama = LlamaForCausalLM.from_pretrained(tiny_dirs["llama"])
    projector = _projector_state("model.")
    stray = {"model.vision_tower.vision_tower.vision_model.post_layernorm.weight": torch.ones(32)}
    src = tmp_path / "llava-full"
    src.mkdir()
    torch.save({**llama.state_dict(), **projector, **stray}, src / "pytorch_model.bin")
    (src / "config.json").write_text(json.dumps(_llava_config(tiny_dirs)))
    AutoTokenizer.from_pretrained(tiny_dirs["llama"]).save_pretrained(src)
    pipeline = load(import_llava(src, tmp_path / "run"))
    _assert_projector(pipeline, projector)
    assert torch.equal(pipeline.model.llm.model.model.norm.weight, llama.model.norm.weight)


class _Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_legacy_pickles_load_with_weights_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               tiny_dirs: dict[str, Path]) -> None:
    """A pickle carrying code is refused with a one-line error (weights_only=True); tensors load."""
    from mmcore.checkpoint import read_state_file
    from mmcore.cli import main

    torch.save({"w": torch.ones(2)}, tmp_path / "ok.bin")
    assert torch.equal(read_state_file(tmp_path / "ok.bin")["w"], torch.ones(2))
    src = tmp_path / "evil"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(_llava_config(tiny_dirs)))
    with open(src / "mm_projector.bin", "wb") as handle:
        pickle.dump({"model.mm_projector.0.weight": _Payload()}, handle)
    code = main(["import", "llava", str(src), "-o", str(tmp_path / "run"), "--llm", str(tiny_dirs["llama"])])
    err = capsys.readouterr()
    assert code == 2 and "weights_only=True" in err.err and "pwned" not in err.out
    assert len(err.err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_default_adapt_state_dict_strips_one_common_prefix() -> None:
    """A component without its own mapping accepts its keys under one common prefix; anything else is left
    to the strict load, which names the culprit."""
    from mmcore_plugin_mlp.projectors import LinearProjector

    from mmcore.checkpoint import load_into
    from mmcore.errors import MmcoreError
    from mmcore.kinds import BuildContext, ComponentConfig, FeatureSpec

    ctx = BuildContext(name="vision", upstream=FeatureSpec(dim=4, num_tokens=2), llm_hidden_size=3)
    source, target = LinearProjector(ComponentConfig(), ctx), LinearProjector(ComponentConfig(), ctx)
    state = {f"model.visual_proj.{k}": v for k, v in source.state_dict().items()}
    load_into(target, target.adapt_state_dict(state), "prefixed")
    assert torch.equal(target.layers.weight, source.layers.weight)
    mixed = {**state, "other.bias": torch.zeros(3)}
    assert target.adapt_state_dict(mixed) == mixed
    with pytest.raises(MmcoreError, match="unexpected"):
        load_into(target, target.adapt_state_dict(mixed), "mixed")
