"""Which timm model (and which overrides) each `model` name builds. Offline: `pretrained=False` is a config.

* `eva_vit_g` / `eva_vit_g_448`: BLIP-2 / MiniGPT-4 / MiniGPT-v2's `create_eva_vit_g(img_size)`
  (Vision-CAIR/MiniGPT-4 `minigpt4/models/eva_vit.py`): timm's `eva_giant_patch14_224` with 39 blocks (not 40),
  MLP ratio 4.3637 (hidden int(1408 × 4.3637) = 6144), q/v biases, no final norm, no fc-norm, no head.
  986,975,872 parameters at 448, 985,894,528 at 224; the state-dict keys are upstream's, 1:1
  (next-systems.md §1.1–1.2).
* Any EVA / EVA02 / EVA-CLIP model timm ships (`eva_giant_patch14_clip_224`, `eva02_large_patch14_clip_336`,
  …), as a feature tower: no head, no pooling (`forward_features`, timm's final norm included).
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

from mmcore.errors import MmcoreError, did_you_mean

__all__ = ["EVA_VIT_G", "PRESETS", "model_names", "timm_kwargs"]

# create_eva_vit_g: VisionTransformer(patch_size=14, embed_dim=1408, depth=39, num_heads=1408 // 88,
# mlp_ratio=4.3637, qkv_bias=True, norm_layer=LayerNorm(eps=1e-6), use_mean_pooling=False), head and final norm
# commented out. timm's eva_giant_patch14_224 already has patch 14, width 1408, 16 heads, LayerNorm eps 1e-6.
EVA_VIT_G: dict[str, Any] = {"depth": 39, "mlp_ratio": 4.3637, "qkv_bias": True,
                             "use_post_transformer_norm": False, "use_fc_norm": False}

# name → (timm model, overrides)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "eva_vit_g": ("eva_giant_patch14_224", {"img_size": 224, **EVA_VIT_G}),  # BLIP-2, MiniGPT-4
    "eva_vit_g_448": ("eva_giant_patch14_224", {"img_size": 448, **EVA_VIT_G}),  # MiniGPT-v2
}

# Set by the encoder itself: a feature tower has no classifier and no pooling.
_FIXED = {"num_classes": 0, "global_pool": ""}


@cache
def model_names() -> tuple[str, ...]:
    """The presets, then every EVA model timm registers (EVA, EVA02, EVA-CLIP)."""
    import timm

    return (*PRESETS, *(n for n in timm.list_models(module="eva") if n.startswith("eva")))


@cache
def _eva_arguments() -> tuple[str, ...]:
    from timm.models.eva import Eva

    return tuple(p for p in inspect.signature(Eva.__init__).parameters if p not in ("self", "device", "dtype"))


def check_model(name: str) -> str:
    """`name` if it is a preset or a timm EVA model, else a did-you-mean."""
    names = model_names()
    if name not in names:
        raise ValueError(f"model '{name}' is not an EVA preset or timm EVA model{did_you_mean(name, names)}; "
                         f"choose one of {', '.join(names)}")
    return name


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """A `config` table of timm `Eva` arguments: unknown keys get a did-you-mean; head and pooling are fixed."""
    arguments = _eva_arguments()
    for key in config:
        if key in _FIXED:
            raise ValueError(f"config.{key}: an encoder has no head and no pooling ({key} = {_FIXED[key]!r} is set)")
        if key not in arguments:
            raise ValueError(f"config.{key}: not an argument of timm's Eva{did_you_mean(key, arguments)}")
        default = _eva_defaults().get(key)
        if not _same_kind(config[key], default):
            raise ValueError(f"config.{key}: {config[key]!r} is not a {type(default).__name__} like timm's default "
                             f"{default!r}")
    return config


@cache
def _eva_defaults() -> dict[str, Any]:
    from timm.models.eva import Eva

    return {n: p.default for n, p in inspect.signature(Eva.__init__).parameters.items()}


def _same_kind(value: Any, default: Any) -> bool:
    """A TOML value of the kind of timm's default: a number where it takes a number (img_size may be [h, w])."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        numbers = value if isinstance(value, list) and isinstance(default, int) else [value]
        return bool(numbers) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)
    return not isinstance(default, str) or isinstance(value, str)


def timm_kwargs(model: str, image_size: int | None, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(timm model name, create_model kwargs) for a preset or timm name, `image_size` and a `config` table."""
    timm_name, overrides = PRESETS.get(model, (model, {}))
    kwargs = {**overrides, **config, **_FIXED}
    if image_size is not None:
        kwargs["img_size"] = image_size
    if "img_size" in config and image_size is not None and config["img_size"] != image_size:
        raise MmcoreError(f"image_size = {image_size} and config.img_size = {config['img_size']} disagree; keep one")
    return timm_name, kwargs
