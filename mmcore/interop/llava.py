"""haotian-liu/LLaVA's own checkpoint layouts → an mmcore run (upstream-systems.md §1.7, §1.8).

* pretrain: `config.json`, `mm_projector.bin` (`model.mm_projector.0.weight` …) → the projector; the
  LLM comes from `--llm`.
* LoRA finetune: `adapter_config.json`, `adapter_model.{bin,safetensors}`, `non_lora_trainables.bin`
  → LoRA on the LLM from `--llm`, and the projector.
* full finetune: `config.json` (`llava_llama`), `pytorch_model*.bin` / `model*.safetensors` → the LLM
  and the projector.

The vision tower always comes from `mm_vision_tower` (LLaVA reloads CLIP from it too; weights a
DeepSpeed save left under `model.vision_tower.*` are ignored, as LLaVA's loader warns). Pickles are
read with `weights_only=True` only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from mmcore.checkpoint import read_state_file
from mmcore.errors import MmcoreError
from mmcore.interop._run import new_run
from mmcore.manifest._toml import toml_value

__all__ = ["import_llava", "peft_to_mmcore_keys"]

_MM_KEYS = ("mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer",
            "mm_vision_select_feature", "mm_patch_merge_type", "use_mm_proj", "image_aspect_ratio",
            "tokenizer_padding_side", "tokenizer_model_max_length", "tune_mm_mlp_adapter",
            "freeze_mm_mlp_adapter", "mm_use_im_start_end", "mm_use_im_patch_token", "mm_projector_lr",
            "image_grid_pinpoints", "mm_vision_tower_lr", "unfreeze_mm_vision_tower", "s2", "s2_scales")


def _projector_table(config: dict[str, Any]) -> str:
    """LLaVA `build_vision_projector`: linear, `^mlp(\\d+)x_gelu$`, identity."""
    kind = config.get("mm_projector_type", "linear")
    if kind == "linear":
        return 'type = "linear"'
    if kind == "identity":
        return 'type = "identity"'
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match is None:
        raise MmcoreError(f"config.json mm_projector_type '{kind}': not one of LLaVA's linear, mlpNx_gelu, identity")
    return f'type = "mlp"\ndepth = {int(match.group(1))}  # {kind}'


def peft_to_mmcore_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's saved adapter keys (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`) →
    the `hf-causal-lm` component's keys after `apply_lora` (`model.model.layers.0…lora_A.default.weight`)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("base_model.model.")
        key = re.sub(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)\.", r".\1.default.", key)
        out["model." + key] = value
    return out


def _weight_files(src: Path) -> list[Path]:
    files = sorted(src.glob("model*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
    return [f for f in files if not f.name.endswith(".index.json")]


def _write_full_llm(src: Path, config: dict[str, Any], files: list[Path], tmp: Path) -> dict[str, torch.Tensor]:
    """A full finetune: the Llama part → `tmp/llm` (save_pretrained); returns the projector keys."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_state_file(file))
    projector = {k: v for k, v in state.items() if "mm_projector." in k}
    llm_state = {k: v for k, v in state.items() if "mm_projector." not in k and ".vision_tower." not in k}
    options = {k: v for k, v in config.items() if k not in _MM_KEYS and not k.startswith("_")}
    model_type = options.pop("model_type", "llava_llama").removeprefix("llava_")  # llava_llama → llama
    options.pop("architectures", None)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **options))
    if "lm_head.weight" not in llm_state and getattr(model.config, "tie_word_embeddings", False):
        llm_state["lm_head.weight"] = llm_state["model.embed_tokens.weight"]
    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(llm_state)), sorted(set(llm_state) - own)
    if missing or unexpected:
        raise MmcoreError(f"{src}: LLM weights do not fit its config.json (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); is this a LLaVA full-finetune folder?")
    model.load_state_dict(llm_state, assign=True)
    model.save_pretrained(tmp / "llm")
    try:
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(tmp / "llm")
    except (OSError, ValueError) as err:
        raise MmcoreError(f"{src}: no loadable tokenizer ({err}); LLaVA saves it beside the weights") from None
    return projector


def import_llava(src: Path, run: Path, llm: str | None = None, vision: str | None = None) -> Path:
    """A LLaVA checkpoint folder → RUN (manifest, upstream weights, `assembly.lock`)."""
    from safetensors.torch import save_file

    config_path = src / "config.json"
    if not config_path.is_file():
        raise MmcoreError(f"{src}: no config.json; point at a LLaVA output_dir (it holds config.json and "
                          f"mm_projector.bin, adapter files or model weights)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise MmcoreError(f"{config_path}: not valid JSON ({err})") from None
    if "mm_vision_tower" not in config and vision is None:
        raise MmcoreError(f"{config_path}: no mm_vision_tower (not a LLaVA config); pass --vision or point "
                          f"at a LLaVA checkpoint")
    lora_file = next((src / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (src / n).is_file()), None)
    lora = (src / "adapter_config.json").is_file() and lora_file is not None
    files = [] if lora else _weight_files(src)
    if not lora and not files and not (src / "mm_projector.bin").is_file():
        raise MmcoreError(f"{src}: none of mm_projector.bin, adapter_model.* with adapter_config.json, or model "
                          f"weights; nothing to import")
    if not files and llm is None:
        what = "a LoRA run holds only adapters" if lora else "a pretrain run holds only mm_projector.bin"
        raise MmcoreError(f"{src}: {what}; pass --llm BASE (the Vicuna directory LLaVA trained it from)")
    with new_run(run) as tmp:
        upstream = tmp / "upstream"
        upstream.mkdir()
        if files:
            projector = _write_full_llm(src, config, files, tmp)
        elif lora:
            extra = src / "non_lora_trainables.bin"
            projector = read_state_file(extra) if extra.is_file() else {}
        else:
            projector = read_state_file(src / "mm_projector.bin")
        projector = {k: v for k, v in projector.items() if "mm_projector." in k}
        if config.get("mm_projector_type", "linear") != "identity" and not projector:
            raise MmcoreError(f"{src}: no mm_projector.* weights found; LLaVA writes them to mm_projector.bin "
                              f"(pretrain), non_lora_trainables.bin (LoRA) or the model weights")
        weights_line = ""
        if projector:
            save_file({k: v.contiguous() for k, v in projector.items()}, str(upstream / "mm_projector.safetensors"),
                      metadata={"format": "pt", "from": str(src)})
            weights_line = 'weights = "upstream/mm_projector.safetensors"  # LLaVA keys, mapped by the projector'
        if lora_file is not None and lora:
            _write_lora(src, lora_file, tmp)
        select = config.get("mm_vision_select_feature", "patch")
        aspect = config.get("image_aspect_ratio", "square")
        if aspect not in ("pad", "square"):
            raise MmcoreError(f"{config_path}: image_aspect_ratio '{aspect}' (LLaVA-NeXT anyres) is not supported; "
                              f"the clip encoder takes pad or square")
        llm_source = "llm" if files else str(Path(str(llm)).resolve()) if Path(str(llm)).exists() else str(llm)
        (tmp / "manifest.toml").write_text(f"""\
# Imported from {src} by `mmcore import llava` (haotian-liu/LLaVA checkpoint layout).

[model]
max_length = {int(config.get("tokenizer_model_max_length", 2048))}

[model.llm]
type = "hf-causal-lm"
source = {toml_value(llm_source)}

[model.encoders.vision]
type = "clip"
modalities = ["image"]
source = {toml_value(vision or config["mm_vision_tower"])}
select_layer = {int(config.get("mm_vision_select_layer", -1))}
select_feature = {toml_value(select)}
image_aspect_ratio = {toml_value(aspect)}

[model.projectors.vision]
{_projector_table(config)}
{weights_line}
""", encoding="utf-8")
    return run


def _write_lora(src: Path, lora_file: Path, tmp: Path) -> None:
    """`weights/llm.safetensors` holding the adapters only (marked as a subset) + `weights/lora.json`."""
    from safetensors.torch import save_file

    adapter = json.loads((src / "adapter_config.json").read_text())
    targets = adapter.get("target_modules")
    if isinstance(targets, str) or not targets:
        raise MmcoreError(f"{src}/adapter_config.json: target_modules {targets!r}; mmcore needs the list of module "
                          f"names (LLaVA's find_all_linear_names writes one)")
    state = peft_to_mmcore_keys(read_state_file(lora_file))
    (tmp / "weights").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "weights" / "llm.safetensors"),
              metadata={"format": "pt", "subset": "lora", "component": "llm"})
    lora = {"r": int(adapter["r"]), "alpha": float(adapter["lora_alpha"]),
            "dropout": float(adapter.get("lora_dropout", 0.0)), "targets": sorted(targets)}
    (tmp / "weights" / "lora.json").write_text(json.dumps(lora))
