"""Tiny real models for tests and benchmarks: a manifest over config-table CLIP + Llama, and a random
transformers `LlavaForConditionalGeneration` saved with `save_pretrained`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_tiny_hf_llava", "tiny_manifest"]

_TINY = """
seed = 0

[model.llm]
type = "hf-causal-lm"
tokenizer = "byte-level"

[model.llm.config]
model_type = "llama"
vocab_size = 260
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 1
num_attention_heads = 4
max_position_embeddings = 256

[model.encoders.vision]
type = "clip"
{encoder}

[model.encoders.vision.config]
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 4
image_size = 28
patch_size = 7

[model.projectors.vision]
{projector}
"""


def tiny_manifest(projector: str, encoder: str = "", extra: str = "") -> str:
    """TOML for a tiny model (CLIP 28 px / 7 px patches → a 4 × 4 grid, 1-layer Llama, byte-level
    tokenizer) with `projector` as the body of `[model.projectors.vision]`; `extra` is appended."""
    return _TINY.format(projector=projector, encoder=encoder) + extra


def save_tiny_hf_llava(folder: Path, vision: dict[str, Any], text: dict[str, Any], image_tokens: int,
                       seed: int = 0) -> Path:
    """A random `LlavaForConditionalGeneration` (CLIP + Llama, byte-level tokenizer with `<image>`) and its
    image processor, written with `save_pretrained`."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from mmcore.builtins.byte_tokenizer import byte_level_tokenizer

    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    text = {"vocab_size": len(tokenizer), "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **text}
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text),
                         image_seq_length=image_tokens, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = int(vision["image_size"])
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder
