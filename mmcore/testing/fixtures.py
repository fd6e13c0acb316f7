"""Tiny real models for tests and benchmarks: a manifest over config-table CLIP + Llama, and a random
transformers `LlavaForConditionalGeneration` saved with `save_pretrained`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["model_manifest", "save_tiny_hf_llava", "tiny_manifest"]

TINY_LLM = {"model_type": "llama", "vocab_size": 260, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 256}
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 28, "patch_size": 7}


def _table(name: str, values: dict[str, Any]) -> str:
    from mmcore.manifest._toml import toml_value

    return f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


def model_manifest(llm: dict[str, Any], vision: dict[str, Any], projector: str, encoder: str = "",
                   extra: str = "", max_length: int | None = None) -> str:
    """TOML for a model from config tables: a random `hf-causal-lm` (`llm`: a transformers config, byte-level
    tokenizer), a random `clip` (`vision`: CLIPVisionConfig kwargs; `encoder`: more clip keys) and
    `projector` as the body of `[model.projectors.vision]`; `extra` (data, stages, eval) is appended."""
    model = f"[model]\nmax_length = {max_length}\n\n" if max_length else ""
    return (f"seed = 0\n\n{model}[model.llm]\ntype = \"hf-causal-lm\"\ntokenizer = \"byte-level\"\n\n"
            f"{_table('model.llm.config', llm)}\n[model.encoders.vision]\ntype = \"clip\"\n{encoder}\n\n"
            f"{_table('model.encoders.vision.config', vision)}\n[model.projectors.vision]\n{projector}\n{extra}")


def tiny_manifest(projector: str, encoder: str = "", extra: str = "") -> str:
    """`model_manifest` at test size: CLIP 28 px / 7 px patches (a 4 × 4 grid), a 1-layer Llama."""
    return model_manifest(TINY_LLM, TINY_VISION, projector, encoder, extra)


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
