"""MiniGPT-v2's own checkpoints → an mmcore run: `mmcore import minigpt-v2 CKPT.pth -o RUN --llm BASE`.

Vision-CAIR/MiniGPT-4 (`minigpt4/runners/runner_base.py::_save_checkpoint`; upstream-systems.md §3.3,
next-systems.md §1.4) saves `checkpoint_*.pth = {"model", "optimizer", "config", "scaler", "epoch"}`, where
"model" keeps the parameters that train and every buffer:

* `llama_proj.{weight,bias}` → the `concat-linear` projector (merge 4: `minigpt_v2.py::encode_img`);
* `llama_model.base_model.model.model.layers.N.self_attn.{q,v}_proj.lora_{A,B}.weight` — peft 0.2.0 keys, without
  the adapter name current peft writes (`lora_A.default.weight`) → LoRA on the `hf-causal-lm`; r from the shapes,
  targets from the keys, α and dropout from the saved config (else MiniGPT-v2's defaults 16 and 0.05);
* buffers the LLM recomputes (`rotary_emb.inv_freq`) are ignored, with a note;
* `visual_encoder.*` / `ln_vision.*` (saved only when the tower trained) → the `eva-vit` encoder.

The LLM comes from `--llm` (LLaMA-2-chat-7B) and the EVA tower from `--vision` (LAVIS' `eva_vit_g.pth`, loaded as
`create_eva_vit_g(448)` does). The run answers with MiniGPT-v2's `llama2` template and `minigpt` boxes. Pickles
are read with `weights_only=True` only.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch

from mmcore.checkpoint import read_pickle
from mmcore.errors import MmcoreError

__all__ = ["import_minigpt_v2", "import_minigpt_v2_command", "lora_key"]

_LORA = re.compile(r"^llama_model\.base_model\.model\.(.+)\.(lora_[AB])(?:\.default)?\.weight$")
_IGNORED_BUFFERS = (".rotary_emb.inv_freq",)  # transformers 4.30 saved it; today's Llama recomputes it
_DEFAULTS = {"lora_alpha": 16, "lora_dropout": 0.05, "image_size": 448}  # MiniGPTv2.__init__ / finetune yaml


def lora_key(key: str) -> str | None:
    """`llama_model.base_model.model.<module>.lora_A.weight` (peft 0.2.0; `.default` tolerated) → the
    `hf-causal-lm` component's key after `apply_lora`: `model.<module>.lora_A.default.weight`; else None."""
    match = _LORA.match(key)
    return f"model.{match.group(1)}.{match.group(2)}.default.weight" if match else None


@dataclass
class _Parts:
    projector: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[str, torch.Tensor] = field(default_factory=dict)  # mmcore keys
    vision: dict[str, torch.Tensor] = field(default_factory=dict)  # encoder keys (visual_encoder.*, ln_vision.*)
    ignored: list[str] = field(default_factory=list)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """("model" state, the saved `config.model` table) from a checkpoint read with weights_only=True."""
    if not path.is_file():
        raise MmcoreError(f"{path}: no such file; pass MiniGPT-v2's checkpoint_*.pth")
    saved = read_pickle(path)
    state = saved.get("model", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MmcoreError(f"{path}: not a MiniGPT checkpoint (a dict whose 'model' maps names to tensors)")
    config = saved.get("config")
    model_config = config.get("model") if isinstance(config, dict) else None  # OmegaConf.to_container(cfg)
    return state, model_config if isinstance(model_config, dict) else {}


def _split(state: dict[str, torch.Tensor], path: Path) -> _Parts:
    """Each key to its component; an unknown key is an error naming it (nothing is dropped in silence)."""
    parts, unknown = _Parts(), []
    for key, value in state.items():
        mapped = lora_key(key)
        if mapped is not None:
            parts.lora[mapped] = value
        elif key.startswith("llama_proj."):
            parts.projector[key] = value
        elif key.startswith(("visual_encoder.", "ln_vision.")):
            parts.vision[key] = value
        elif key.startswith("llama_model.") and key.endswith(_IGNORED_BUFFERS):
            parts.ignored.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise MmcoreError(f"{path}: {len(unknown)} keys are not MiniGPT-v2's llama_proj, LoRA or vision keys "
                          f"({', '.join(unknown[:3])}); this importer reads MiniGPT-v2's own checkpoint_*.pth")
    if set(parts.projector) != {"llama_proj.weight", "llama_proj.bias"}:
        raise MmcoreError(f"{path}: no llama_proj.weight and .bias; a MiniGPT-v2 checkpoint always holds them")
    return parts


def _lora_settings(lora: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """r from lora_A's shape, targets from the module names, α and dropout from the saved config."""
    ranks = {v.shape[0] for k, v in lora.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise MmcoreError(f"LoRA adapters of different ranks {sorted(ranks)}; MiniGPT-v2 uses one lora_r")
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[1] for k in lora})
    alpha = config.get("lora_alpha", _DEFAULTS["lora_alpha"])
    dropout = config.get("lora_dropout", _DEFAULTS["lora_dropout"])
    return {"r": int(ranks.pop()), "alpha": float(alpha), "dropout": float(dropout), "targets": targets}


def _check_llm(llm: str, parts: _Parts) -> None:
    """llama_proj's output and the LoRA inputs must match the LLM's width (a 13B base for a 7B checkpoint…)."""
    from mmcore.sources import resolve_source

    config = resolve_source(llm, Path.cwd()).config
    hidden = int(config.get("hidden_size", config.get("text_config", {}).get("hidden_size", 0)))
    width = int(parts.projector["llama_proj.weight"].shape[0])
    lora_in = {int(v.shape[1]) for k, v in parts.lora.items() if ".lora_A." in k and "q_proj" in k}
    if hidden and (width != hidden or lora_in - {hidden}):
        raise MmcoreError(f"--llm {llm}: hidden size {hidden}, but the checkpoint's llama_proj writes {width} "
                          f"(LoRA inputs {sorted(lora_in)}); pass the base LLM MiniGPT-v2 was trained from")


def _toml(value: Any) -> str:
    """A TOML literal, inline tables included (`config = { depth = 2 }` from --vision-config)."""
    from mmcore.manifest._toml import toml_value

    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    return toml_value(value)


def _vision_table(vision: str | None, parts: _Parts, config: dict[str, Any], options: dict[str, Any]) -> str:
    """The `eva-vit` encoder table: EVA-ViT-g at the saved image size, ln_vision, upstream's precision."""
    tower_saved = any(k.startswith("visual_encoder.") for k in parts.vision)
    if vision is None and not tower_saved:
        raise MmcoreError("the checkpoint holds no EVA weights (MiniGPT-v2 saves only llama_proj and LoRA); pass "
                          "--vision eva_vit_g.pth (LAVIS BLIP-2's EVA-ViT-g)")
    if vision is not None and not Path(vision).is_file():
        raise MmcoreError(f"--vision {vision}: no such file; pass the EVA-ViT-g weights (eva_vit_g.pth)")
    trained = config.get("freeze_vit") is False  # upstream: "fp16 is not for training" → fp32
    table = {"model": "eva_vit_g", "image_size": int(config.get("image_size", _DEFAULTS["image_size"])),
             "ln_vision": True, "precision": "fp32" if trained else str(config.get("vit_precision", "fp16")),
             **options}
    if vision is not None:
        table["weights"] = str(Path(vision).resolve())
    return "".join(f"{key} = {_toml(value)}\n" for key, value in table.items())


def _save(state: dict[str, torch.Tensor], path: Path, **metadata: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt", **metadata})


def import_minigpt_v2(ckpt: Path, run: Path, llm: str, vision: str | None = None,
                      vision_options: dict[str, Any] | None = None) -> Path:
    """A MiniGPT-v2 checkpoint → RUN (manifest, llama_proj, LoRA, `assembly.lock`). `vision_options`: encoder
    table keys over EVA-ViT-g's (another tower size, `precision`)."""
    from mmcore.interop._run import new_run

    state, config = _read(ckpt)
    parts = _split(state, ckpt)
    _check_llm(llm, parts)
    encoder = _vision_table(vision, parts, config, vision_options or {})
    lora = _lora_settings(parts.lora, config) if parts.lora else None
    llm_source = str(Path(llm).resolve()) if Path(llm).exists() else llm
    with new_run(run) as tmp:
        _save(parts.projector, tmp / "upstream" / "llama_proj.safetensors", source=str(ckpt))
        if parts.vision:
            complete = any(k.startswith("visual_encoder.") for k in parts.vision)
            _save(parts.vision, tmp / "weights" / "encoders.vision.safetensors",
                  **({} if complete else {"subset": "ln_vision", "component": "encoders.vision"}))
        if lora is not None:
            _save(parts.lora, tmp / "weights" / "llm.safetensors", subset="lora", component="llm")
            (tmp / "weights" / "lora.json").write_text(json.dumps(lora))
        (tmp / "manifest.toml").write_text(f"""\
# Imported from {ckpt} by `mmcore import minigpt-v2` (Vision-CAIR/MiniGPT-4 MiniGPT-v2 checkpoint).

[model.llm]
type = "hf-causal-lm"
source = {_toml(llm_source)}

[model.encoders.vision]
type = "eva-vit"
modalities = ["image"]
{encoder}
[model.projectors.vision]
type = "concat-linear"
merge = 4  # minigpt_v2.py: view(B, N / 4, 4C)
weights = "upstream/llama_proj.safetensors"  # MiniGPT-v2's llama_proj.*

[eval]
template = "llama2"
box_codec = "minigpt"
""", encoding="utf-8")
    _note(parts, lora, config)
    return run


def _note(parts: _Parts, lora: dict[str, Any] | None, config: dict[str, Any]) -> None:
    said = "the checkpoint's config" if "lora_alpha" in config else "MiniGPT-v2's default; the checkpoint does not say"
    what = (f"LoRA r={lora['r']} α={lora['alpha']:g} ({said}) on {', '.join(lora['targets'])}" if lora
            else "no LoRA (llama_proj only)")
    ignored = (f"; ignored {len(parts.ignored)} buffers the LLM recomputes (rotary_emb.inv_freq)"
               if parts.ignored else "")
    print(f"note: imported llama_proj, {what}{ignored}", file=sys.stderr)


@click.command(name="minigpt-v2")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Run directory to create.")
@click.option("--llm", required=True, help="The base LLM MiniGPT-v2 trained from (LLaMA-2-chat-7B directory).")
@click.option("--vision", help="EVA-ViT-g weights (LAVIS BLIP-2's eva_vit_g.pth).")
@click.option("--vision-config", help="JSON: encoder table keys over EVA-ViT-g's (another tower, precision).")
def import_minigpt_v2_command(source: Path, output: Path, llm: str, vision: str | None,
                              vision_config: str | None) -> None:
    """A MiniGPT-v2 checkpoint_*.pth (llama_proj + peft-0.2.0 LoRA) with its base LLM and EVA tower."""
    from mmcore.interop._run import json_options

    options = json_options("--vision-config", vision_config, "encoder", '{"precision": "fp32"}')
    import_minigpt_v2(source, output, llm, vision, options)
    click.echo(f"wrote {output} (next: mmcore generate {output} --image IMG --prompt '[vqa] ...')")
