"""`clip`: a transformers `CLIPVisionModel` as an mmcore encoder, for images and videos.

LLaVA-1.5 (upstream-systems.md §1.1, §1.4): features are `hidden_states[select_layer]` with
`select_layer = -2`; `select_feature = "patch"` drops CLS (`[:, 1:]`), `"cls_patch"` keeps it;
finetuning pads images to a centred square filled with the CLIP mean colour before the processor.

Video (u-LLaVA `models/ullava_core.py::encode_video`, upstream-systems.md §5.1): T = `video_frames` (8) frames
chosen as u-LLaVA's data code does (`video.py`), CLIP per frame → (B, T, N, C); then spatio-temporal pooling:
temporal = mean over the N patches (B, T, C), spatial = mean over the T frames (B, N, C), concatenated
[temporal, spatial] → (B, T + N, C): 8 + 256 = 264 tokens for CLIP-L/14-224.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field, field_validator, model_validator

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, ComponentConfig, Encoder, Features, FeatureSpec, MediaView, Viewed
from mmcore.sources import check_config_table, resolve_source
from mmcore_plugin_clip.video import Sampling, read_frames

__all__ = ["ClipEncoder", "ClipEncoderConfig", "ClipView", "expand_to_square"]

# OpenAI CLIP normalisation (transformers OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEncoderConfig(ComponentConfig):
    source: str | None = None  # save_pretrained directory, preset ("openai/clip-vit-large-patch14-336") or hub id
    config: dict[str, Any] | None = None  # or: CLIPVisionConfig kwargs, random init
    init: Literal["pretrained", "random"] = "pretrained"
    select_layer: int = -2  # LLaVA-1.5 `--mm_vision_select_layer -2`
    select_feature: Literal["patch", "cls_patch"] = "patch"
    # "pad": expand2square then the processor (LLaVA finetune); "square": the processor alone, resize the
    # short side and centre-crop (LLaVA pretrain); "resize": squash to S × S, bicubic (Honeybee DefaultProcessor)
    image_aspect_ratio: Literal["pad", "square", "resize"] = "pad"
    pad_color: Literal["mean"] | tuple[int, int, int] = "mean"  # u-LLaVA pads with (255, 255, 255)
    # several hidden layers as feature levels (Honeybee's list `feature_layer_index`, for the D-Abstractor)
    feature_levels: list[int] | None = None
    # video (u-LLaVA: `n_frm` 8; "uniform" as its video_eval, "headtail" as its video_train / gif_train)
    video_frames: int = Field(8, ge=1, le=256)
    video_sampling: Sampling = "uniform"
    # how each frame becomes S × S: u-LLaVA's video_eval squashes it (decord's resize to 224 × 224) = "resize";
    # its gif_train random-resized-crops instead (augmentation, not reproduced)
    video_aspect_ratio: Literal["pad", "square", "resize"] = "resize"

    @model_validator(mode="after")
    def _one_source(self) -> ClipEncoderConfig:
        if (self.source is None) == (self.config is None):
            raise ValueError("give exactly one of `source` (path, preset or hub id) and `config` (a table)")
        if self.config is not None:  # a typo'd key would otherwise build a default-sized tower in silence
            from transformers import CLIPVisionConfig

            check_config_table(CLIPVisionConfig, self.config)
        return self

    @field_validator("select_layer")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("select_layer 0 is the patch embedding, not a transformer layer; use -1 or -2")
        return value


def expand_to_square(image: Any, color: tuple[int, int, int]) -> Any:
    """LLaVA `expand2square`: paste the image centred on a square canvas of `color`."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class ClipView(MediaView):
    """CLIP's preprocessing, picklable: LLaVA's pad-to-square (or Honeybee's squash resize), then the
    CLIPImageProcessor (resize the short side, centre-crop, normalise). A video item: T frames (`video.py`),
    each through the same processor → (T, 3, S, S)."""

    def __init__(self, processor: Any, aspect: str, pad_color: tuple[int, int, int], size: int, frames: int = 8,
                 sampling: Sampling = "uniform", video_aspect: str = "resize") -> None:
        self.processor, self.aspect, self.pad_color, self.size = processor, aspect, pad_color, size
        self.frames, self.sampling, self.video_aspect = frames, sampling, video_aspect

    def _shaped(self, image: Any, aspect: str) -> Any:
        from PIL import Image

        image = image.convert("RGB")
        if aspect == "pad":
            return expand_to_square(image, self.pad_color)
        if aspect == "resize":
            return image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return image

    def __call__(self, item: Any, modality: str) -> Viewed:
        from PIL import Image

        if modality == "video":
            frames = [self._shaped(f, self.video_aspect) for f in read_frames(item, self.frames, self.sampling)]
            return self.processor(images=frames, return_tensors="pt")["pixel_values"], {}  # (T, 3, S, S)
        image = Image.open(item) if isinstance(item, (str, Path)) else item
        return self.processor(images=self._shaped(image, self.aspect), return_tensors="pt")["pixel_values"][0], {}


class ClipEncoder(Encoder):
    """CLIP ViT vision tower; `self.vision` keeps transformers' module names."""

    Config: ClassVar[type[ComponentConfig]] = ClipEncoderConfig
    modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    preprocessing_fields: ClassVar[tuple[str, ...]] = ("image_aspect_ratio", "pad_color", "video_sampling",
                                                       "video_aspect_ratio")
    vision: Any  # transformers CLIPVisionModel

    def __init__(self, config: ClipEncoderConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        from transformers import CLIPVisionConfig, CLIPVisionModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        source = resolve_source(config.source, ctx.base_dir) if config.source else None
        options = dict(source.config if source else config.config or {})
        options = dict(options.get("vision_config", options))  # a full CLIPModel config.json works too
        options.pop("model_type", None)
        hf_config: Any = CLIPVisionConfig(**options)
        layers = hf_config.num_hidden_layers
        for value in [config.select_layer, *(config.feature_levels or [])]:
            if not -layers - 1 <= value <= layers or value == 0:
                raise MmcoreError(f"layer {value} (select_layer / feature_levels) is outside the {layers} layers "
                                  f"of this CLIP; use values in -{layers}..-1")
        if source is not None and config.init == "pretrained" and not ctx.on_meta:
            if source.path is None:
                raise MmcoreError(f"encoder source '{config.source}': weights are not on this machine (only "
                                  f"its preset config is); download them, or set init = \"random\"")
            self.vision = CLIPVisionModel.from_pretrained(str(source.path), dtype=torch.float32)
        else:
            with ctx.device:
                self.vision = CLIPVisionModel(hf_config)
        self.image_size = int(hf_config.image_size)
        self.patch_size = int(hf_config.patch_size)
        self._processor_dir: Path | None = source.path if source else None

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "image_size": 28, "patch_size": 14}}

    @property
    def output_spec(self) -> FeatureSpec:
        side = self.image_size // self.patch_size
        keep_cls = self.config.select_feature == "cls_patch"
        width = int(self.vision.config.hidden_size)
        return FeatureSpec(dim=width, num_tokens=side * side + int(keep_cls),
                           grid=None if keep_cls else (side, side), pooled_dim=width,  # pooled: the layer's CLS
                           num_levels=len(self.config.feature_levels or [None]))

    def feature_spec(self, modality: str) -> FeatureSpec:
        """Image: `output_spec`. Video: T temporal then the N spatial tokens (u-LLaVA), no grid."""
        spec = self.output_spec
        if modality != "video":
            return spec
        return FeatureSpec(dim=spec.dim, num_tokens=self.config.video_frames + spec.num_tokens, grid=None,
                           pooled_dim=spec.pooled_dim, num_levels=spec.num_levels)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        frame = (3, self.image_size, self.image_size)
        return (self.config.video_frames, *frame) if modality == "video" else frame

    # --- preprocessing (data-loader workers) -----------------------------------------------------
    def media_view(self, **preprocessing: Any) -> MediaView:
        config = self.preprocessing_config(**preprocessing)
        from transformers import CLIPImageProcessor

        saved = self._processor_dir is not None and (self._processor_dir / "preprocessor_config.json").exists()
        processor = (CLIPImageProcessor.from_pretrained(str(self._processor_dir)) if saved else
                     CLIPImageProcessor(size={"shortest_edge": self.image_size},
                                        crop_size={"height": self.image_size, "width": self.image_size},
                                        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)))
        color = config.pad_color
        if color == "mean":  # LLaVA: tuple(int(x * 255) for x in processor.image_mean)
            color = tuple(int(x * 255) for x in processor.image_mean)
        red, green, blue = color
        return self.keyed_view(ClipView(processor, config.image_aspect_ratio, (int(red), int(green), int(blue)),
                                        self.image_size, config.video_frames, config.video_sampling,
                                        config.video_aspect_ratio))

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, media: torch.Tensor, modality: str) -> Features:
        """Image (B, 3, S, S) → (B, N, C). Video (B, T, 3, S, S) → CLIP per frame, pooled → (B, T + N, C)."""
        if modality == "video":
            batch, frames = media.shape[:2]
            per_frame = self._frames(media.flatten(0, 1))  # (B·T, N, C) each
            return Features(tokens=_pool(per_frame.tokens, batch, frames), grid=None,
                            pooled=cast(torch.Tensor, per_frame.pooled).view(batch, frames, -1).mean(dim=1),
                            levels=tuple(_pool(level, batch, frames) for level in per_frame.levels or ()) or None)
        return self._frames(media)

    def _frames(self, media: torch.Tensor) -> Features:
        """(B, 3, S, S) → the selected layer's tokens (B, N, C), its CLS as `pooled`, and the feature levels."""
        dtype = self.vision.dtype
        out = self.vision(pixel_values=media.to(dtype), output_hidden_states=True)
        tokens = out.hidden_states[self.config.select_layer]  # (B, 1 + N, C)
        pooled = tokens[:, 0]
        start = 1 if self.config.select_feature == "patch" else 0  # "patch": CLS dropped
        levels = tuple(out.hidden_states[i][:, start:] for i in self.config.feature_levels or [])
        return Features(tokens=tokens[:, start:], grid=self.output_spec.grid, pooled=pooled, levels=levels or None)


def _pool(per_frame: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """u-LLaVA `encode_video`: (B·T, N, C) → cat([mean over patches (B, T, C), mean over frames (B, N, C)], 1)."""
    video = per_frame.reshape(batch, frames, *per_frame.shape[1:])  # (B, T, N, C)
    return torch.cat([video.mean(dim=2), video.mean(dim=1)], dim=1)  # (B, T + N, C)
