"""Meta's LLaMA checkpoint layout (`consolidated.*.pth` + `params.json`) → a transformers Llama directory.

transformers 5 no longer ships `convert_llama_weights_to_hf.py`, so the keys are mapped here as that script
did: `tok_embeddings` → `model.embed_tokens`, `layers.N.attention.w{q,k,v,o}` → `self_attn.{q,k,v,o}_proj`,
`feed_forward.w{1,2,3}` → `mlp.{gate,down,up}_proj`, `attention_norm` / `ffn_norm` → `input_layernorm` /
`post_attention_layernorm`, `norm` → `model.norm`, `output` → `lm_head`. Meta's rotary embedding rotates
interleaved pairs (x0, x1), (x2, x3) …; transformers' rotates halves, so the rows of wq and wk are permuted
within each head (`_permute`). Model-parallel shards are concatenated along the split dimension.
FFN width: `multiple_of · ⌈int(2 · 4 · dim / 3 · ffn_dim_multiplier) / multiple_of⌉` (`llama.py::FeedForward`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmcore.errors import MmcoreError

__all__ = ["is_meta_llama", "meta_llama_config", "meta_to_hf_state", "write_hf_llama"]

# key in a shard → (HF key pattern, dimension the shards split along, or None when replicated)
_LAYER = {"attention.wq.weight": ("self_attn.q_proj.weight", 0), "attention.wk.weight": ("self_attn.k_proj.weight", 0),
          "attention.wv.weight": ("self_attn.v_proj.weight", 0), "attention.wo.weight": ("self_attn.o_proj.weight", 1),
          "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0), "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
          "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
          "attention_norm.weight": ("input_layernorm.weight", None),
          "ffn_norm.weight": ("post_attention_layernorm.weight", None)}
_TOP = {"tok_embeddings.weight": ("model.embed_tokens.weight", 1), "norm.weight": ("model.norm.weight", None),
        "output.weight": ("lm_head.weight", 0)}


def is_meta_llama(folder: Path) -> bool:
    return (folder / "params.json").is_file() and any(folder.glob("consolidated.*.pth"))


def meta_llama_config(params: dict[str, Any], vocab_size: int) -> Any:
    """A transformers LlamaConfig equal to Meta's `ModelArgs`."""
    from transformers import LlamaConfig

    dim, multiple = int(params["dim"]), int(params.get("multiple_of", 256))
    hidden = int(2 * 4 * dim / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(float(params["ffn_dim_multiplier"]) * hidden)
    hidden = multiple * ((hidden + multiple - 1) // multiple)
    heads = int(params["n_heads"])
    return LlamaConfig(vocab_size=vocab_size, hidden_size=dim, intermediate_size=hidden,
                       num_hidden_layers=int(params["n_layers"]), num_attention_heads=heads,
                       num_key_value_heads=int(params.get("n_kv_heads") or heads),
                       rms_norm_eps=float(params.get("norm_eps", 1e-6)),
                       rope_parameters={"rope_type": "default", "rope_theta": float(params.get("rope_theta", 1e4))},
                       max_position_embeddings=int(params.get("max_seq_len", 2048)), tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta's interleaved rotary pairs → transformers' rotated halves, per head."""
    rows, cols = weight.shape
    return weight.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _merge(shards: list[dict[str, torch.Tensor]], key: str, dim: int | None) -> torch.Tensor:
    if dim is None or len(shards) == 1:
        return shards[0][key]
    return torch.cat([s[key] for s in shards], dim=dim)


def meta_to_hf_state(shards: list[dict[str, torch.Tensor]], config: Any) -> dict[str, torch.Tensor]:
    """Meta's state dicts (one per model-parallel shard) → LlamaForCausalLM keys."""
    state = {hf: _merge(shards, key, dim) for key, (hf, dim) in _TOP.items()}
    kv_heads = config.num_key_value_heads
    for layer in range(config.num_hidden_layers):
        for key, (hf, dim) in _LAYER.items():
            value = _merge(shards, f"layers.{layer}.{key}", dim)
            if key == "attention.wq.weight":
                value = _permute(value, config.num_attention_heads)
            elif key == "attention.wk.weight":
                value = _permute(value, kv_heads)
            state[f"model.layers.{layer}.{hf}"] = value
    return state


def read_meta_llama(folder: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """(LlamaConfig, HF state) of a Meta folder; one-line errors for what does not fit."""
    if not is_meta_llama(folder):
        raise MmcoreError(f"{folder}: no params.json + consolidated.*.pth; point at Meta's LLaMA folder (e.g. 7B/)")
    params = json.loads((folder / "params.json").read_text())
    shards = [torch.load(path, map_location="cpu", weights_only=True)
              for path in sorted(folder.glob("consolidated.*.pth"))]
    if "tok_embeddings.weight" not in shards[0]:
        raise MmcoreError(f"{folder}/consolidated.00.pth: no tok_embeddings.weight; not a Meta LLaMA checkpoint")
    vocab = int(params.get("vocab_size", -1))
    vocab = vocab if vocab > 0 else int(shards[0]["output.weight"].shape[0]) * len(shards)
    config = meta_llama_config(params, vocab)
    try:
        return config, meta_to_hf_state(shards, config)
    except KeyError as err:
        raise MmcoreError(f"{folder}: missing key {err} for {config.num_hidden_layers} layers (params.json)") from None


def write_hf_llama(folder: Path, output: Path, tokenizer: str | None = None) -> Path:
    """Write `output` (save_pretrained) from Meta's `folder`; the tokenizer from `tokenizer` (a directory,
    "byte-level") or the folder's `tokenizer.model` (needs sentencepiece), else none."""
    from transformers import LlamaForCausalLM

    config, state = read_meta_llama(folder)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, assign=True, strict=True)
    model.save_pretrained(str(output))
    _save_tokenizer(folder, output, tokenizer)
    return output


def _save_tokenizer(folder: Path, output: Path, tokenizer: str | None) -> None:
    from transformers import AutoTokenizer, LlamaTokenizer

    if tokenizer == "byte-level":
        from mmcore.builtins.byte_tokenizer import byte_level_tokenizer

        byte_level_tokenizer().save_pretrained(str(output))
    elif tokenizer is not None:
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(str(output))
    else:
        model = folder / "tokenizer.model"
        model = model if model.is_file() else folder.parent / "tokenizer.model"  # Meta: beside the 7B/ folder
        if not model.is_file():
            return
        try:
            LlamaTokenizer(vocab_file=str(model)).save_pretrained(str(output))
        except (ImportError, ValueError, OSError) as err:
            raise MmcoreError(f"{model}: cannot be converted here ({err}); pass --tokenizer with a Llama tokenizer "
                              f"directory") from None
