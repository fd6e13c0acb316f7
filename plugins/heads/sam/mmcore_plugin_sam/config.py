"""The `sam-mask` head's options: a SAM preset (vit_b / vit_l / vit_h) with optional overrides, loss weights.

The presets are segment-anything 1.0's own (`segment_anything/build_sam.py`: `build_sam_vit_{b,l,h}` and
`_build_sam`): 1024-px input, 16-px patches, window 14 with global attention in four blocks, a 256-wide
prompt space, a two-way transformer of depth 2 (MLP 2048, 8 heads) in the mask decoder. Any architecture
field left unset comes from the preset; setting one builds a custom SAM (the tiny test configuration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from mmcore.kinds import HeadConfig

__all__ = ["PRESETS", "SamArchitecture", "SamMaskHeadConfig"]

# segment_anything/build_sam.py: (embed_dim, depth, num_heads, global_attn_indexes) per preset
PRESETS: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
}


@dataclass(frozen=True)
class SamArchitecture:
    """Every number that shapes the SAM modules, after the preset is applied."""

    image_size: int  # the padded square the image encoder takes (1024)
    patch_size: int  # 16 → a 64 × 64 image embedding at 1024 px
    encoder_width: int
    encoder_depth: int
    encoder_heads: int
    global_attn_layers: tuple[int, ...]
    window_size: int
    prompt_dim: int  # SAM's prompt / mask-decoder width (256); the seg projector's output width
    decoder_depth: int
    decoder_mlp_dim: int
    decoder_heads: int

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size


class SamMaskHeadConfig(HeadConfig):
    trigger_token: str = "[SEG]"  # u-LLaVA DEFAULT_SEG_TOKEN (models/__init__.py)
    preset: Literal["vit_b", "vit_l", "vit_h"] = "vit_h"  # u-LLaVA: build_sam_vit_h
    image_size: int | None = Field(None, ge=16)
    patch_size: int | None = Field(None, ge=1)
    encoder_width: int | None = Field(None, ge=1)
    encoder_depth: int | None = Field(None, ge=1)
    encoder_heads: int | None = Field(None, ge=1)
    global_attn_layers: list[int] | None = None
    window_size: int | None = Field(None, ge=0)
    prompt_dim: int = Field(256, ge=8)  # u-LLaVA out_dim
    decoder_depth: int = Field(2, ge=1)
    decoder_mlp_dim: int = Field(2048, ge=1)
    decoder_heads: int = Field(8, ge=1)
    # u-LLaVA UllavaConfig: bce_weight 2.0, dice_weight 0.5; models/loss.py dice_loss(scale=1000, eps=1e-6)
    bce_weight: float = Field(2.0, ge=0)
    dice_weight: float = Field(0.5, ge=0)
    dice_scale: float = Field(1000.0, gt=0)
    dice_eps: float = Field(1e-6, gt=0)
    # The frozen image encoder may run under bf16 autocast (u-LLaVA runs all of SAM in bf16); the rest of
    # the head computes in fp32 whatever the stage's precision (`compute_dtype`).
    encoder_precision: Literal["fp32", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _consistent(self) -> SamMaskHeadConfig:
        arch = self.architecture()
        if arch.image_size % arch.patch_size:
            raise ValueError(f"image_size {arch.image_size} is not a multiple of patch_size {arch.patch_size}")
        if arch.encoder_width % arch.encoder_heads:
            raise ValueError(f"encoder_width {arch.encoder_width} is not divisible by encoder_heads "
                             f"{arch.encoder_heads}")
        if any(not 0 <= i < arch.encoder_depth for i in arch.global_attn_layers):
            raise ValueError(f"global_attn_layers {list(arch.global_attn_layers)} must lie in "
                             f"0..{arch.encoder_depth - 1} (encoder_depth {arch.encoder_depth})")
        if arch.prompt_dim % 8 or (arch.prompt_dim // 2) % arch.decoder_heads:
            raise ValueError(f"prompt_dim {arch.prompt_dim} must be a multiple of 8 whose half is divisible by "
                             f"decoder_heads {arch.decoder_heads} (SAM's mask upscaling and attention downsampling)")
        return self

    def architecture(self) -> SamArchitecture:
        """The preset with this config's overrides applied."""
        width, depth, heads, global_layers = PRESETS[self.preset]

        def pick(value: int | None, default: int) -> int:
            return default if value is None else value

        layers = tuple(self.global_attn_layers) if self.global_attn_layers is not None else global_layers
        return SamArchitecture(
            image_size=pick(self.image_size, 1024), patch_size=pick(self.patch_size, 16),
            encoder_width=pick(self.encoder_width, width), encoder_depth=pick(self.encoder_depth, depth),
            encoder_heads=pick(self.encoder_heads, heads), global_attn_layers=layers,
            window_size=pick(self.window_size, 14), prompt_dim=self.prompt_dim, decoder_depth=self.decoder_depth,
            decoder_mlp_dim=self.decoder_mlp_dim, decoder_heads=self.decoder_heads)
