"""u-LLaVA's own checkpoints → an mmcore run: `mmcore import ullava DIR -o RUN`.

OPPOMKLab/u-LLaVA (986c4fa; upstream-systems.md §5.3) saves stage II with transformers' `Trainer._save`
(`train_ullava.py::safe_save_model_for_hf_trainer`): `config.json` (`UllavaConfig`: `llm_config` with the CLIP
`vision_config`, `vision_hidden_layer`, `projector_type`; `out_dim`, `seg_token_idx`, `loc_token_idx`), the
tokenizer, and `pytorch_model.bin` (or shards + `pytorch_model.bin.index.json`, or safetensors) whose keys are

* `llm.model.*`, `llm.lm_head.*` → the `hf-causal-lm` (a transformers Llama directory written in RUN/upstream/llm);
* `llm.vision_encoder.*` (`CLIPVisionModel`) → the `clip` encoder (RUN/upstream/clip);
* `llm.vision_projector.*` → the `linear` projector (`projector_type 'mlp'`; `'mlp2x'` → `mlp` depth 2);
* `visual_model.*` (SAM) and `seg_projector.*` → the `sam-mask` head; `det_projector.*`, `det_decoder.*` → the
  `box-decoder` head (each reads u-LLaVA's keys itself);
* with LoRA (`lora_r > 0`), the keys without `lora_` and with `.base_model.model` removed, plus peft's
  `adapter_config.json` + `adapter_model.bin` (peft 0.4: `base_model.model.<module>.lora_A.weight`) → LoRA on the LLM.

A stage-I checkpoint (`ullava_core`: `model.*`, `lm_head.*`, `vision_encoder.*`, `vision_projector.*`) imports
without heads. SAM's size comes from its weights (vit_b / vit_l / vit_h); another one needs `--sam-config`. Pickles
are read with `weights_only=True` only; rotary `inv_freq` buffers (transformers 4.29) are ignored with a note.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch

from mmcore.checkpoint import read_state_file
from mmcore.errors import MmcoreError

__all__ = ["import_ullava", "import_ullava_command", "split_keys"]

_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json")
_ANSWER_TOKENS = ["[SEG]", "[LOC]", "[tag]", "[/tag]"]  # models/__init__.py: added in stage II, kept in answers
_SAM_WIDTHS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}  # segment_anything build_sam_vit_*


@dataclass
class _Parts:
    llm: dict[str, torch.Tensor] = field(default_factory=dict)  # transformers LlamaForCausalLM keys
    clip: dict[str, torch.Tensor] = field(default_factory=dict)  # CLIPVisionModel keys
    projector: dict[str, torch.Tensor] = field(default_factory=dict)  # mmcore projector keys (layers.*)
    sam: dict[str, torch.Tensor] = field(default_factory=dict)  # u-LLaVA keys: visual_model.*, seg_projector.*
    box: dict[str, torch.Tensor] = field(default_factory=dict)  # u-LLaVA keys: det_projector.*, det_decoder.*
    ignored: list[str] = field(default_factory=list)


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    """Trainer._save's weights: one file, or the shards its index names (safetensors or pickles)."""
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return read_state_file(folder / single)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_state_file(folder / shard))
            return state
    raise MmcoreError(f"{folder}: no pytorch_model.bin, model.safetensors or shard index; pass the output_dir "
                      f"u-LLaVA's train_ullava.py wrote")


def split_keys(state: dict[str, torch.Tensor], stage_one: bool = False) -> _Parts:
    """Each u-LLaVA key to its component (LoRA base keys tolerated); an unknown key is an error naming it."""
    parts, unknown = _Parts(), []
    for key, value in state.items():
        name = key.replace(".base_layer.", ".")  # peft >= 0.7 base layers; 0.4 kept `weight` in place
        name = ("llm." + name) if stage_one else name
        if name.endswith(".rotary_emb.inv_freq"):
            parts.ignored.append(key)
        elif name.startswith(("llm.model.", "llm.lm_head.")):
            parts.llm[name.removeprefix("llm.")] = value
        elif name.startswith("llm.vision_encoder."):
            parts.clip[name.removeprefix("llm.vision_encoder.")] = value
        elif name.startswith("llm.vision_projector."):
            parts.projector["layers." + name.removeprefix("llm.vision_projector.")] = value
        elif name.startswith(("visual_model.", "seg_projector.")):
            parts.sam[name] = value
        elif name.startswith(("det_projector.", "det_decoder.")):
            parts.box[name] = value
        else:
            unknown.append(key)
    if unknown:
        raise MmcoreError(f"{len(unknown)} keys are not u-LLaVA's llm / seg_projector / det_projector / det_decoder / "
                          f"visual_model keys ({', '.join(unknown[:3])}); pass a u-LLaVA output_dir")
    if not parts.llm or not parts.clip or not parts.projector:
        raise MmcoreError("the checkpoint lacks the LLM, the CLIP tower or the projector (llm.model.*, "
                          "llm.vision_encoder.*, llm.vision_projector.*); pass a complete u-LLaVA output_dir")
    return parts


def _sam_table(sam: dict[str, torch.Tensor], given: dict[str, Any]) -> dict[str, Any]:
    """vit_b / vit_l / vit_h from the image encoder's width (else `--sam-config` must say), plus SAM's prompt width."""
    if given:
        return given
    width = int(sam["visual_model.image_encoder.patch_embed.proj.weight"].shape[0])
    depth = len({k.split(".")[3] for k in sam if k.startswith("visual_model.image_encoder.blocks.")})
    preset = _SAM_WIDTHS.get(width)
    if preset is None or depth != {"vit_h": 32, "vit_l": 24, "vit_b": 12}[preset]:
        raise MmcoreError(f"visual_model is a SAM of width {width} and depth {depth}, none of vit_b / vit_l / vit_h; "
                          f"pass --sam-config '{{\"preset\": \"vit_b\", \"encoder_width\": ..., ...}}' (the sam-mask "
                          f"head's keys)")
    return {"preset": preset}


def _check_tokens(folder: Path, config: dict[str, Any]) -> None:
    """u-LLaVA's trigger ids (config seg_token_idx / loc_token_idx) must be the tokenizer's [SEG] / [LOC]."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it reads config.json, whose model_type 'ullava' transformers does not know
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    finally:
        hf_logging.set_verbosity(level)
    for token, key in (("[SEG]", "seg_token_idx"), ("[LOC]", "loc_token_idx")):
        found = tokenizer.convert_tokens_to_ids(token)
        if key in config and found != int(config[key]):
            raise MmcoreError(f"{folder}: the tokenizer gives {token} id {found} but config.json's {key} is "
                              f"{config[key]}; pass the tokenizer saved with this checkpoint")


def _lora(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """peft's adapter (0.4: `base_model.model.<module>.lora_A.weight`) → mmcore's LLM keys and lora.json."""
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    found = [p for p in (folder / "adapter_model.safetensors", folder / "adapter_model.bin") if p.is_file()]
    if not found:
        raise MmcoreError(f"{folder}: adapter_config.json without adapter_model.bin; copy the adapter weights too")
    state = {}
    for key, value in read_state_file(found[0]).items():
        module, _, tail = key.removeprefix("base_model.model.").rpartition(".lora_")
        state[f"model.{module}.lora_{tail.split('.')[0]}.default.weight"] = value
    targets = config.get("target_modules") or []
    names = sorted({t.rsplit(".", 1)[-1] for t in (targets if isinstance(targets, list) else [targets])})
    return state, {"r": int(config["r"]), "alpha": float(config.get("lora_alpha", 16)),
                   "dropout": float(config.get("lora_dropout", 0.05)), "targets": names}


def _save(state: dict[str, torch.Tensor], path: Path, **metadata: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt", **metadata})


def _write_llm(folder: Path, source: Path, llm_config: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
    """A transformers Llama directory: config (u-LLaVA's extra keys dropped), weights, u-LLaVA's tokenizer."""
    from transformers import LlamaConfig

    extra = {"vision_config", "vision_hidden_layer", "projector_type", "projector_from_scratch", "mm_token_ids",
             "architectures", "model_type", "auto_map", "_name_or_path", "transformers_version"}
    LlamaConfig(**{k: v for k, v in llm_config.items() if k not in extra}).save_pretrained(str(folder))
    _save(weights, folder / "model.safetensors")
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)


def _write_clip(folder: Path, vision_config: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
    """A transformers CLIPVisionModel directory and CLIP's processor at the tower's size (clip-vit-large-patch14's)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    config = CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k not in ("architectures", "model_type")})
    config.save_pretrained(str(folder))
    _save(weights, folder / "model.safetensors")
    size = int(vision_config.get("image_size", 224))
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        str(folder))


def _toml(value: Any) -> str:
    from mmcore.manifest._toml import toml_value

    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    return toml_value(value)


def _manifest(source: Path, llm_config: dict[str, Any], config: dict[str, Any], sam: dict[str, Any] | None) -> str:
    projector = {"mlp": 'type = "linear"  # projector_type \'mlp\': one Linear',
                 "mlp2x": 'type = "mlp"\ndepth = 2  # projector_type \'mlp2x\': Linear, GELU, Linear'}
    kind = str(llm_config.get("projector_type", "mlp"))
    if kind not in projector:
        raise MmcoreError(f"projector_type '{kind}': u-LLaVA builds 'mlp' or 'mlp2x' only")
    heads = "" if sam is None else (
        "\n[model.heads.seg]\ntype = \"sam-mask\"\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in sam.items())
        + "weights = \"upstream/sam.safetensors\"  # visual_model.* + seg_projector.*\n"
        + f"\n[model.heads.loc]\ntype = \"box-decoder\"\nout_dim = {int(config.get('out_dim', 256))}\n"
        + "loss_normalisation = \"ullava\"\n"
        + "weights = \"upstream/box.safetensors\"  # det_projector.* + det_decoder.*\n")
    return f"""\
# Imported from {source} by `mmcore import ullava` (OPPOMKLab/u-LLaVA checkpoint).

[model.llm]
type = "hf-causal-lm"
source = "upstream/llm"
special_tokens = {_toml(_ANSWER_TOKENS)}  # already in u-LLaVA's tokenizer; declared so answers keep them

[model.encoders.vision]
type = "clip"
source = "upstream/clip"
modalities = ["image"]
select_layer = {int(llm_config.get("vision_hidden_layer", -2))}
select_feature = "patch"
image_aspect_ratio = "pad"
pad_color = [255, 255, 255]  # u-LLaVA's clip_processor pads with white

[model.projectors.vision]
{projector[kind]}
weights = "upstream/projector.safetensors"
{heads}
[eval]
template = "ullava"
"""


def import_ullava(source: Path, run: Path, sam_config: dict[str, Any] | None = None) -> Path:
    """A u-LLaVA output_dir → RUN (manifest, the LLM / CLIP directories, head and projector weights, LoRA)."""
    from mmcore.interop._run import new_run

    if not (source / "config.json").is_file():
        raise MmcoreError(f"{source}: no config.json; pass the output_dir u-LLaVA's train_ullava.py wrote")
    config = json.loads((source / "config.json").read_text())
    stage_one = config.get("model_type") == "ullava_core"
    if config.get("model_type") not in ("ullava", "ullava_core"):
        raise MmcoreError(f"{source}/config.json: model_type {config.get('model_type')!r}, not u-LLaVA's 'ullava' "
                          f"(stage II) or 'ullava_core' (stage I)")
    llm_config = config if stage_one else config.get("llm_config") or {}
    if not isinstance(llm_config.get("vision_config"), dict):
        raise MmcoreError(f"{source}/config.json: no llm_config.vision_config (the CLIP tower's config)")
    parts = split_keys(_read_state(source), stage_one)
    _check_tokens(source, config)
    lora = _lora(source)
    sam = _sam_table(parts.sam, sam_config or {}) if parts.sam else None
    with new_run(run) as tmp:
        _write_llm(tmp / "upstream" / "llm", source, llm_config, parts.llm)
        _write_clip(tmp / "upstream" / "clip", llm_config["vision_config"], parts.clip)
        _save(parts.projector, tmp / "upstream" / "projector.safetensors", source=str(source))
        if parts.sam:
            _save(parts.sam, tmp / "upstream" / "sam.safetensors", source=str(source))
            _save(parts.box, tmp / "upstream" / "box.safetensors", source=str(source))
        if lora is not None:
            _save(lora[0], tmp / "weights" / "llm.safetensors", subset="lora", component="llm")
            (tmp / "weights" / "lora.json").write_text(json.dumps(lora[1]))
        (tmp / "manifest.toml").write_text(_manifest(source, llm_config, config, sam), encoding="utf-8")
    what = f"LoRA r={lora[1]['r']} on {', '.join(lora[1]['targets'])}" if lora else "no LoRA"
    heads = "SAM mask head and box head" if parts.sam else "no heads (stage I)"
    ignored = f"; ignored {len(parts.ignored)} rotary inv_freq buffers" if parts.ignored else ""
    print(f"note: imported the LLM, CLIP, projector, {heads}, {what}{ignored}", file=sys.stderr)
    return run


@click.command(name="ullava")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Run directory to create.")
@click.option("--sam-config", help="JSON: sam-mask head keys for a SAM that is none of vit_b / vit_l / vit_h.")
def import_ullava_command(source: Path, output: Path, sam_config: str | None) -> None:
    """A u-LLaVA output_dir (llm.*, seg_projector.*, det_projector.*, det_decoder.*, visual_model.*, LoRA adapter)."""
    if not source.is_dir():
        raise MmcoreError(f"{source}: no such directory; pass u-LLaVA's output_dir")
    from mmcore.interop._run import json_options

    options = json_options("--sam-config", sam_config, "sam-mask", '{"preset": "vit_b"}')
    import_ullava(source, output, options)
    click.echo(f"wrote {output} (next: mmcore generate {output} --image IMG --prompt 'segment the ...')")
