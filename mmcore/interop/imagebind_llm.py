"""ImageBind-LLM's checkpoint (OpenGVLab/LLaMA-Adapter `imagebind_LLM`, upstream-systems.md §4.5) → an mmcore run.

The release `.pth` is `{"model": ...}` after `convert_ckpt.py`: the LLM's `bias`, `gate`, `lora` and `norm`
tensors (`llma.` renamed `llama.`), the bind network `image_bind_*` and `prefix_query`. The base LLaMA comes
from `--llama` (Meta's folder, converted here, or a transformers directory), ImageBind from `--imagebind`.

* gates, `image_bind_*`, `prefix_query` → the `bind-network` projector (`weights = "upstream/…"`, mapped by it)
* `llama.layers.N.attention.w{q,o}.bias`, `feed_forward.w{1,2,3}.bias` → `bias_tuning = "llama-adapter"`
* `lora_w{q,k,v,o,1,2,3}_l{1,2}` → peft LoRA A/B with alpha = r (upstream adds x·l1·l2 unscaled)
* `attention_norm`, `ffn_norm`, `norm` → the LLM's RMSNorm weights
wq's rows (weight, bias, LoRA l2) and wk's are permuted per head as the base weights are (`meta_llama._permute`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import torch

from mmcore.errors import MmcoreError
from mmcore.interop._run import new_run
from mmcore.interop.meta_llama import _permute, is_meta_llama, write_hf_llama
from mmcore.manifest._toml import toml_value

__all__ = ["import_imagebind_llm", "import_imagebind_llm_command", "import_llama_command", "llm_adapter_state"]

_PROJ = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
         "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
         "feed_forward.w3": "mlp.up_proj"}
_NORM = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def read_adapter(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, `llma.` read as `llama.` (convert_ckpt.py's rename)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of every kind: one line
        reason = str(err).splitlines()[0][:100]
        raise MmcoreError(f"{path}: not a readable ImageBind-LLM checkpoint ({reason})") from None
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not any(k.startswith("image_bind_") for k in state):
        raise MmcoreError(f"{path}: no image_bind_* keys; expected ImageBind-LLM's {{'model': ...}} (7B.pth)")
    return {k.replace("llma.", "llama.", 1): v for k, v in state.items()}


def llm_adapter_state(state: dict[str, torch.Tensor], heads: int, kv_heads: int) -> tuple[dict[str, torch.Tensor], int]:
    """The LLM's part → `hf-causal-lm` keys with LoRA in place (peft: `…q_proj.base_layer.bias`,
    `…q_proj.lora_A.default.weight`); returns (state, LoRA rank or 0)."""
    out: dict[str, torch.Tensor] = {}
    rank = 0
    for key, value in state.items():
        if key == "llama.norm.weight":
            out["model.model.norm.weight"] = value
            continue
        match = re.fullmatch(r"llama\.layers\.(\d+)\.(.+)", key)
        if match is None:
            continue
        layer, rest = f"model.model.layers.{match.group(1)}", match.group(2)
        norm = re.fullmatch(r"(attention_norm|ffn_norm)\.weight", rest)
        bias = re.fullmatch(r"(attention\.w[qkvo]|feed_forward\.w[123])\.bias", rest)
        lora = re.fullmatch(r"(attention|feed_forward)\.lora_(w[qkvo123])_l([12])\.weight", rest)
        if norm:
            out[f"{layer}.{_NORM[norm.group(1)]}.weight"] = value
        elif bias:
            name = bias.group(1)
            value = _permute(value[:, None], heads)[:, 0] if name == "attention.wq" else value
            out[f"{layer}.{_PROJ[name]}.base_layer.bias"] = value
        elif lora:
            name = f"{lora.group(1)}.{lora.group(2)}"
            if lora.group(3) == "2" and name in ("attention.wq", "attention.wk"):
                value = _permute(value, heads if name == "attention.wq" else kv_heads)
            rank = int(value.shape[0] if lora.group(3) == "1" else value.shape[1])
            out[f"{layer}.{_PROJ[name]}.lora_{'A' if lora.group(3) == '1' else 'B'}.default.weight"] = value
    return out, rank


def _manifest(src: Path, llm_source: str, projector_weights: str, legacy: bool, query_layer: int,
              imagebind: str | None, architecture: dict[str, Any] | None) -> str:
    encoder = f"weights = {toml_value(imagebind)}\n" if imagebind else ""
    if architecture:
        table = ", ".join(f"{key} = {toml_value(value)}" for key, value in architecture.items())
        encoder += f"architecture = {{ {table} }}\n"
    return f"""\
# Imported from {src} by `mmcore import imagebind-llm` (OpenGVLab/LLaMA-Adapter imagebind_LLM layout).

[model]
max_length = 512

[model.llm]
type = "hf-causal-lm"
source = {toml_value(llm_source)}
bias_tuning = "llama-adapter"

[model.encoders.bind]
type = "imagebind"
modalities = ["image", "video", "audio", "depth", "thermal", "imu"]
{encoder}
[model.projectors.bind]
type = "bind-network"
query_layer = {query_layer}
legacy_bridge = {toml_value(legacy)}
weights = {toml_value(projector_weights)}

[eval]
template = "alpaca"
"""


def import_imagebind_llm(src: Path, run: Path, llama: Path, tokenizer: str | None = None,
                         imagebind: str | None = None, architecture: dict[str, Any] | None = None) -> Path:
    """ImageBind-LLM `.pth` + base LLaMA → RUN (manifest, converted LLM, projector weights, LLM adapter weights)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    state = read_adapter(src)
    if not llama.is_dir():
        raise MmcoreError(f"--llama {llama}: no such directory; pass Meta's LLaMA folder or a transformers one")
    with new_run(run) as tmp:
        if is_meta_llama(llama):
            write_hf_llama(llama, tmp / "llm", tokenizer)
            llm_source = "llm"
        else:
            llm_source = str(llama.resolve())
        config = AutoConfig.from_pretrained(str(tmp / "llm" if llm_source == "llm" else llama))
        heads = int(config.num_attention_heads)
        llm_state, rank = llm_adapter_state(state, heads, int(getattr(config, "num_key_value_heads", heads)))
        (tmp / "upstream").mkdir()
        bind = {k: v.contiguous() for k, v in state.items()
                if k.startswith(("image_bind_", "prefix_query")) or k.endswith(".attention.gate")}
        save_file(bind, str(tmp / "upstream" / "imagebind_llm.safetensors"))
        (tmp / "weights").mkdir()
        save_file({k: v.contiguous() for k, v in llm_state.items()}, str(tmp / "weights" / "llm.safetensors"),
                  metadata={"format": "pt", "subset": "imagebind-llm", "component": "llm"})
        if rank:
            lora = {"r": rank, "alpha": float(rank), "dropout": 0.0, "targets": TARGETS}
            (tmp / "weights" / "lora.json").write_text(json.dumps(lora))
        layers = int(config.num_hidden_layers)
        query_layer = min(int(state["prefix_query.weight"].shape[0]), layers)
        legacy = "image_bind_f1_1.bias" in state
        (tmp / "manifest.toml").write_text(_manifest(src, llm_source, "upstream/imagebind_llm.safetensors", legacy,
                                                     query_layer, imagebind, architecture), encoding="utf-8")
    return run


@click.command(name="imagebind-llm")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--llama", type=click.Path(path_type=Path), required=True,
              help="Base LLaMA: Meta's folder (params.json + consolidated.*.pth) or a transformers directory.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Run directory to create.")
@click.option("--imagebind", help="ImageBind weights (imagebind_huge.pth or imagebind_w3D.pth).")
@click.option("--tokenizer", help="Tokenizer directory (or 'byte-level') when Meta's tokenizer.model cannot be read.")
@click.option("--encoder-architecture", help="JSON of ImageBindModel arguments (default: imagebind_huge).")
def import_imagebind_llm_command(source: Path, llama: Path, output: Path, imagebind: str | None,
                                 tokenizer: str | None, encoder_architecture: str | None) -> None:
    """An ImageBind-LLM checkpoint (7B.pth: bias/gate/lora/norm + bind network) over a base LLaMA."""
    if not source.is_file():
        raise MmcoreError(f"{source}: no such file; pass ImageBind-LLM's .pth (e.g. 7B.pth)")
    try:
        architecture = json.loads(encoder_architecture) if encoder_architecture else None
    except json.JSONDecodeError as err:
        raise MmcoreError(f"--encoder-architecture: not JSON ({err})") from None
    import_imagebind_llm(source, output, llama, tokenizer, imagebind, architecture)
    if imagebind is None:
        click.echo("note: no --imagebind weights: the encoder starts random; pass imagebind_huge.pth", err=True)
    click.echo(f"wrote {output} (next: mmcore generate {output} --image IMG --prompt '...')")


@click.command(name="llama")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Directory to create.")
@click.option("--tokenizer", help="Tokenizer directory or 'byte-level' (default: the folder's tokenizer.model).")
def import_llama_command(source: Path, output: Path, tokenizer: str | None) -> None:
    """Meta's LLaMA folder (consolidated.*.pth + params.json) → a transformers Llama directory (a `source`)."""
    from mmcore.interop._run import new_folder

    with new_folder(output) as tmp:
        write_hf_llama(source, tmp, tokenizer)
    click.echo(f"wrote {output} (use it as [model.llm] source)")
