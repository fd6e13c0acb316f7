"""`eva-vit`: timm's EVA as an mmcore encoder, with BLIP-2 / MiniGPT-v2's EVA-ViT-g exactly.

MiniGPT-v2 (`minigpt4/models/minigpt_v2.py::encode_img`, upstream-systems.md §3.1):

    x = ln_vision(visual_encoder(image))[:, 1:, :]      # (B, 1024, 1408) at 448: CLS dropped

* `visual_encoder` is timm's `Eva` built from a preset (`presets.py`); its state-dict keys are upstream's.
* `ln_vision = true` adds MiniGPT-v2's `LayerNorm(1408)` (eps 1e-5), computed in fp32 (`base_model.LayerNorm`).
* `precision = "fp16"` (upstream `vit_precision`): through the core's dtype policy the Conv/Linear weights are
  stored in fp16 and LayerNorms, position embedding, CLS token and q/v biases stay fp32, as
  `convert_weights_to_fp16` leaves them; the model runs the tower under fp16 autocast (`maybe_autocast`).
* Preprocessing is BLIP-2's `blip2_image_{train,eval}`: resize to S × S bicubic, no crop, CLIP mean/std.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from mmcore.kinds import BuildContext, ComponentConfig, Encoder, Features, FeatureSpec, MediaView, Viewed
from mmcore_plugin_eva.presets import check_config, check_model, timm_kwargs
from mmcore_plugin_eva.weights import map_upstream_state

__all__ = ["CLIP_MEAN", "CLIP_STD", "EvaConfig", "EvaEncoder", "EvaView"]

# BLIP-2's BlipImageBaseProcessor defaults (OpenAI CLIP's normalisation).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class EvaConfig(ComponentConfig):
    model: str = "eva_vit_g"  # a preset (eva_vit_g, eva_vit_g_448) or a timm EVA model name
    image_size: int | None = Field(None, ge=1)  # default: the model's (eva_vit_g 224, eva_vit_g_448 448)
    config: dict[str, Any] = Field(default_factory=dict)  # timm Eva arguments over the preset (tiny towers, ...)
    ln_vision: bool = False  # MiniGPT-v2's LayerNorm after the tower, computed in fp32
    select_feature: Literal["patch", "cls_patch"] = "patch"  # "patch": CLS dropped (MiniGPT-v2's [:, 1:])
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"  # upstream vit_precision; fp32 to train the tower

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_model(value)

    @field_validator("config")
    @classmethod
    def _timm_arguments(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_config(value)


class EvaView(MediaView):
    """BLIP-2's `blip2_image_eval` (and MiniGPT-v2's `blip2_image_train`, which does no crop either):
    torchvision Resize((S, S), BICUBIC) of the PIL image, ToTensor, Normalize(CLIP mean/std). Picklable."""

    def __init__(self, size: tuple[int, int], mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD) -> None:
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        self.size = size
        self.transform = transforms.Compose([transforms.Resize(size, interpolation=InterpolationMode.BICUBIC),
                                             transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __call__(self, item: Any, modality: str) -> Viewed:
        from PIL import Image

        image = Image.open(item) if isinstance(item, (str, Path)) else item
        return self.transform(image.convert("RGB")), {}  # (3, S, S)


class EvaEncoder(Encoder):
    """timm's EVA tower (`visual_encoder`, upstream's key names) + optional `ln_vision`."""

    Config: ClassVar[type[ComponentConfig]] = EvaConfig
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    # upstream convert_weights_to_fp16 casts Conv/Linear only: everything else stays fp32
    keep_fp32: ClassVar[tuple[str, ...]] = ("visual_encoder.cls_token", "visual_encoder.reg_token",
                                            "visual_encoder.pos_embed", "*.q_bias", "*.v_bias", "*norm*",
                                            "*gamma*", "ln_vision.*")
    visual_encoder: Any  # timm.models.eva.Eva
    ln_vision: nn.LayerNorm | None

    def __init__(self, config: EvaConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        import timm

        name, kwargs = timm_kwargs(config.model, config.image_size, config.config)
        with ctx.device:
            self.visual_encoder = timm.create_model(name, pretrained=False, **kwargs)
            width = int(self.visual_encoder.embed_dim)
            self.ln_vision = nn.LayerNorm(width) if config.ln_vision else None  # minigpt_base: LayerNorm(1408)
        self.set_compute_dtype(_DTYPES[config.precision])

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"config": {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 4}, "ln_vision": True,
                "precision": "fp32"}

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.visual_encoder.num_prefix_tokens)  # CLS (+ registers)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.visual_encoder.patch_embed.grid_size  # image size // patch size
        return int(h), int(w)

    @property
    def output_spec(self) -> FeatureSpec:
        h, w = self.grid
        width = int(self.visual_encoder.embed_dim)
        keep_prefix = self.config.select_feature == "cls_patch"
        return FeatureSpec(dim=width, num_tokens=h * w + (self.num_prefix_tokens if keep_prefix else 0),
                           grid=None if keep_prefix else (h, w), pooled_dim=width if self.num_prefix_tokens else None)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        h, w = self.visual_encoder.patch_embed.img_size
        return (3, int(h), int(w))

    def media_view(self, **preprocessing: Any) -> EvaView:
        self.preprocessing_config(**preprocessing)  # none may change per stage; names the offending key
        _, h, w = self.input_shape("image")
        return EvaView((h, w))

    def forward(self, media: torch.Tensor, modality: str) -> Features:
        tokens = self.visual_encoder.forward_features(media)  # (B, P + h·w, C), P prefix tokens (CLS)
        if self.ln_vision is not None:
            tokens = self.ln_vision(tokens.float())  # MiniGPT-v2 LayerNorm: input cast to fp32
        pooled = tokens[:, 0] if self.num_prefix_tokens else None
        start = self.num_prefix_tokens if self.config.select_feature == "patch" else 0
        return Features(tokens=tokens[:, start:], grid=self.output_spec.grid, pooled=pooled)  # (B, h·w, C)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`eva_vit_g.pth` (bare upstream keys, 16×16 position embedding) or MiniGPT's `visual_encoder.*` /
        `ln_vision.*`: see `weights.map_upstream_state`."""
        prefix = 0 if getattr(self.visual_encoder, "no_embed_class", False) else self.num_prefix_tokens
        return map_upstream_state(state, self.state_dict(), "visual_encoder", self.grid, prefix)
