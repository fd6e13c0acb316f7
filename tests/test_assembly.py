"""Assembly: meta-device builds, exact parameter counts, wiring, the lock, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.assembly import assemble
from mmcore.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_llava_7b_counts_match_the_real_model() -> None:
    """LLaVA-1.5-7B on meta: CLIP-L/336 303,507,456; mlp2x_gelu 20,979,712; Vicuna-7B 6,738,415,616."""
    assembly = assemble(EXAMPLES / "llava-1.5-7b.toml")
    assert assembly.parameters == {"llm": 6_738_415_616, "encoders.vision": 303_507_456,
                                   "projectors.vision": 20_979_712}
    assert sum(assembly.parameters.values()) == 7_062_902_784
    assert assembly.tokens_per_item == {"image": 576}
    assert assembly.trainable["align"]["projectors.vision"] == 20_979_712
    assert all(p.is_meta for p in assembly.model.parameters())


def test_dimensions_are_wired_not_declared(tiny_manifest: Path) -> None:
    """The projector's input width comes from the encoder and its output width from the LLM."""
    model = assemble(tiny_manifest).model
    layers = model.projectors["vision"].layers
    assert layers[0].in_features == model.encoders["vision"].output_spec.dim == 32
    assert layers[-1].out_features == model.llm.hidden_size == 48


def test_lora_and_bias_norm_counts(write_manifest: Any, tiny_model_text: str) -> None:
    """LoRA adds r·(in+out) per targeted linear; bias-norm counts the LLM's norms and biases."""
    text = tiny_model_text + """
[[stages]]
name = "lora"
trainable = ["projectors"]
[stages.lora]
r = 4
targets = ["q_proj", "v_proj"]

[[stages]]
name = "bias-norm"
bias_norm = true
"""
    assembly = assemble(write_manifest(text))
    # tiny Llama: 2 layers; q_proj 48→48, v_proj 48→24 (2 KV heads of 12)
    assert assembly.trainable["lora"]["llm"] == 2 * 4 * ((48 + 48) + (48 + 24))
    norms = sum(p.numel() for n, p in assembly.model.llm.named_parameters() if "norm" in n or "bias" in n)
    assert assembly.trainable["bias-norm"]["llm"] == norms


def test_lock_is_complete_and_stable(tiny_manifest: Path) -> None:
    """The lock holds the resolved manifest with defaults, plugin versions and a hash stable across runs."""
    from mmcore.run._lock import lock_data

    first, second = lock_data(assemble(tiny_manifest), []), lock_data(assemble(tiny_manifest), [])
    assert first["hash"] == second["hash"]
    vision = first["resolved"]["model"]["encoders"]["vision"]
    assert vision["select_layer"] == -2 and vision["select_feature"] == "patch"  # defaults filled in
    assert first["components"]["encoders.vision"]["distribution"] == "mmcore-plugin-clip"
    assert first["resolved"]["stages"][0]["warmup_ratio"] == 0.03


def test_assemble_writes_run_and_dry_run_writes_nothing(tiny_manifest: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`assemble -o RUN` writes the lock and manifest; `--dry-run` writes nothing; both print the table."""
    assert main(["assemble", str(tiny_manifest), "-o", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert not (tmp_path / "dry").exists()
    assert main(["assemble", str(tiny_manifest), "-o", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "projectors.vision" in out and "mmcore-plugin-mlp 0.2.0" in out and "train:align" in out
    lock = json.loads((tmp_path / "run" / "assembly.lock").read_text())
    assert lock["tokens_per_item"] == {"image": 4}


def test_grid_requirement_names_the_encoder(tiny_manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A projector that needs a grid fails clearly when the encoder keeps CLS."""
    from mmcore_plugin_mlp.projectors import MlpProjector

    from mmcore.errors import ManifestError

    monkeypatch.setattr(MlpProjector, "requires_grid", True)
    text = tiny_manifest.read_text().replace('type = "clip"', 'type = "clip"\nselect_feature = "cls_patch"')
    tiny_manifest.write_text(text)
    with pytest.raises(ManifestError, match="needs grid-shaped features, but encoder 'vision'"):
        assemble(tiny_manifest)


def test_loaded_llm_matches_transformers(tiny_pipeline: Any, tiny_dirs: dict[str, Path]) -> None:
    """hf-causal-lm loads the saved weights: logits equal transformers' own from_pretrained."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["llama"])).eval()
    ids = torch.tensor([[1, 50, 60, 70, 2]])
    mask = torch.ones_like(ids)
    llm = tiny_pipeline.model.llm
    ours = llm(llm.embed(ids), mask, mask.cumsum(-1) - 1).logits
    assert torch.allclose(ours, reference(input_ids=ids).logits, atol=1e-6)


def test_special_tokens_resize_with_mean_rows(tiny_dirs: dict[str, Path]) -> None:
    """New special tokens grow embedding and LM head; new rows are the mean of the old rows."""
    from mmcore.builtins.hf_llm import HFCausalLM
    from mmcore.kinds import BuildContext

    llm = HFCausalLM(HFCausalLM.Config(source=str(tiny_dirs["llama"])), BuildContext(name="llm"))
    before = llm.model.get_input_embeddings().weight.detach().clone()
    ids = llm.add_special_tokens(["[SEG]", "[LOC]"])
    assert ids == [260, 261] and llm.vocab_size == 262
    embed = llm.model.get_input_embeddings().weight
    assert torch.allclose(embed[260], before.mean(0)) and torch.allclose(embed[:260], before)
    assert llm.model.get_output_embeddings().weight.shape[0] == 262
    assert llm.tokenizer("a[SEG]", add_special_tokens=False).input_ids[-1] == 260


def test_lora_targets_exclude_the_lm_head(tiny_pipeline: Any) -> None:
    """LoRA targets are every linear of the LLM but lm_head (LLaVA find_all_linear_names)."""
    assert tiny_pipeline.model.llm.lora_target_names() == ["down_proj", "gate_proj", "k_proj", "o_proj",
                                                            "q_proj", "up_proj", "v_proj"]


def test_generate_cli_end_to_end(tiny_manifest: Path, tmp_path: Path, images: list[Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`mmcore assemble` then `mmcore generate RUN --image --prompt` prints an answer."""
    run = tmp_path / "run"
    assert main(["assemble", str(tiny_manifest), "-o", str(run)]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--image", str(images[0]), "--prompt", "What colour?",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # one printed answer (a random model's text)
    assert main(["generate", str(run), "--image", "missing.png", "--prompt", "x"]) == 2


def test_llava_13b_and_lora_counts() -> None:
    """LLaVA-1.5-13B: Vicuna-13B 13,015,864,320 + mlp2x_gelu 31,467,520 (1024→5120→5120) + CLIP; the 7B
    LoRA recipe (r 128 on every LLM linear) trains 319,815,680 LoRA parameters."""
    big = assemble(EXAMPLES / "llava-1.5-13b.toml")
    assert big.parameters == {"llm": 13_015_864_320, "encoders.vision": 303_507_456,
                              "projectors.vision": 31_467_520}
    lora = assemble(EXAMPLES / "llava-1.5-7b-lora.toml")
    assert lora.trainable["instruct"] == {"llm": 319_815_680, "encoders.vision": 0,
                                          "projectors.vision": 20_979_712}


@pytest.mark.parametrize(("name", "tokens", "projector"), [
    ("honeybee-c-7b-m144", 144, 37_070_336), ("honeybee-d-7b-m144", 144, 55_616_352),
    ("honeybee-c-13b-m256", 256, 47_885_824)])
def test_honeybee_examples_assemble(name: str, tokens: int, projector: int) -> None:
    """The Honeybee manifests assemble on the meta device: M visual tokens, the abstractor trains in both
    stages, the LLM in the second only, the vision tower never."""
    assembly = assemble(EXAMPLES / f"{name}.toml")
    assert assembly.tokens_per_item == {"image": tokens}
    assert assembly.parameters["projectors.vision"] == projector
    assert assembly.trainable["pretrain"]["llm"] == 0 and assembly.trainable["instruct"]["encoders.vision"] == 0
    assert assembly.trainable["pretrain"]["projectors.vision"] == projector
