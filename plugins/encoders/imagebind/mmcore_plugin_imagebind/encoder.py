"""`imagebind`: Meta's ImageBind (imagebind-unofficial's model code) for image, video, audio, depth, thermal, IMU.

Features per item: `pooled` is the modality's embedding, L2-normalised (ImageBind-LLM `forward_visual`:
`F.normalize(image_bind({m: x})[m])`; the postprocessors' fixed logit scales — audio 20, depth 5, thermal 10,
imu 5 — are divided out by it). `tokens` is that embedding as one token (B, 1, C_out), which any token
projector can read for every modality, or — with `trunk_tokens = "image"` (or another modality) — that
modality's trunk output (B, N, C_trunk) for token projectors (vision: 257 × 1280 at huge). Clips (audio: 3,
video: 15) are averaged after the postprocessor, as ImageBind does.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, ComponentConfig, Encoder, Features, FeatureSpec
from mmcore_plugin_imagebind._library import imagebind_model
from mmcore_plugin_imagebind.audio import AudioSettings
from mmcore_plugin_imagebind.views import IMU_STEPS, ImageBindView

__all__ = ["HUGE", "ImageBindConfig", "ImageBindEncoder"]

# imagebind_model.imagebind_huge's arguments (1,200,781,057 parameters, next-systems.md §2.1)
HUGE: dict[str, Any] = {"vision_embed_dim": 1280, "vision_num_blocks": 32, "vision_num_heads": 16,
                        "text_embed_dim": 1024, "text_num_blocks": 24, "text_num_heads": 16, "out_embed_dim": 1024,
                        "audio_drop_path": 0.1, "imu_drop_path": 0.7}
TRUNK = {"image": "vision", "video": "vision", "audio": "audio", "depth": "depth", "thermal": "thermal", "imu": "imu"}
TINY = {"out_embed_dim": 32, "vision_embed_dim": 32, "vision_num_blocks": 1, "vision_num_heads": 2,
        "audio_embed_dim": 32, "audio_num_blocks": 1, "audio_num_heads": 2, "text_embed_dim": 16,
        "text_num_blocks": 1, "text_num_heads": 2, "depth_embed_dim": 16, "depth_num_blocks": 1,
        "depth_num_heads": 2, "thermal_embed_dim": 16, "thermal_num_blocks": 1, "thermal_num_heads": 2,
        "imu_embed_dim": 16, "imu_num_blocks": 1, "imu_num_heads": 2}


class ImageBindConfig(ComponentConfig):
    # ImageBindModel arguments over imagebind_huge's (e.g. a tiny model for tests: out_embed_dim = 32, ...)
    architecture: dict[str, float | int] = Field(default_factory=dict)
    trunk_tokens: Literal["image", "video", "audio", "depth", "thermal", "imu"] | None = None
    # preprocessing (imagebind/data.py defaults)
    audio_sample_rate: int = 16000
    audio_clip_duration: float = 2.0
    audio_clips: int = 3
    audio_mean: float = -4.268
    audio_std: float = 9.138
    video_clips: int = 5
    video_fps: float = 30.0  # frames given without their rate
    depth_scale: float = 1.0

    @field_validator("architecture", mode="before")
    @classmethod
    def _known_arguments(cls, value: Any) -> Any:
        import difflib

        valid = [p for p in inspect.signature(imagebind_model().ImageBindModel.__init__).parameters if p != "self"]
        for key, given in (value.items() if isinstance(value, dict) else ()):
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"architecture.{key}: not an ImageBindModel argument{hint}")
            if isinstance(given, bool) or not isinstance(given, (int, float)):
                raise ValueError(f"architecture.{key}: {given!r} is not a number")
        return value


class ImageBindEncoder(Encoder):
    """ImageBind on every modality it was trained on (text is in the model but not an input here)."""

    Config: ClassVar[type[ComponentConfig]] = ImageBindConfig
    modalities: ClassVar[tuple[str, ...]] = ("image", "video", "audio", "depth", "thermal", "imu")
    preprocessing_fields: ClassVar[tuple[str, ...]] = ("audio_clips", "video_clips", "depth_scale", "video_fps")

    def __init__(self, config: ImageBindConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        arguments = {**HUGE, **config.architecture}
        with ctx.device:
            self.model = imagebind_model().ImageBindModel(**arguments)
        self.model.eval()
        self.arguments = arguments

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"architecture": TINY}

    def train(self, mode: bool = True) -> ImageBindEncoder:
        super().train(mode)
        self.model.eval()  # used frozen (ImageBind-LLM): audio's and IMU's drop-path stay off
        return self

    # --- shapes ----------------------------------------------------------------------------------
    def _trunk_spec(self, trunk: str) -> tuple[int, int]:
        """(tokens, width) of a trunk's output for one clip."""
        width = int(self.arguments.get(f"{trunk}_embed_dim", inspect.signature(
            imagebind_model().ImageBindModel.__init__).parameters[f"{trunk}_embed_dim"].default))
        tokens = {"vision": 1 + 16 * 16, "audio": 1 + 12 * 19, "depth": 1 + 14 * 14, "thermal": 1 + 14 * 14,
                  "imu": 1 + IMU_STEPS // 8}[trunk]
        return tokens, width

    @property
    def output_spec(self) -> FeatureSpec:
        out = int(self.arguments["out_embed_dim"])
        if self.config.trunk_tokens is None:
            return FeatureSpec(dim=out, num_tokens=1, pooled_dim=out)
        tokens, width = self._trunk_spec(TRUNK[self.config.trunk_tokens])
        return FeatureSpec(dim=width, num_tokens=tokens, pooled_dim=out)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        shapes = {"image": (3, 224, 224), "video": (3 * self.config.video_clips, 3, 2, 224, 224),
                  "audio": (self.config.audio_clips, 1, 128, 204), "depth": (1, 224, 224),
                  "thermal": (1, 224, 224), "imu": (6, IMU_STEPS)}
        return shapes[modality]

    def media_view(self, **preprocessing: Any) -> ImageBindView:
        cfg = self.preprocessing_config(**preprocessing)
        audio = AudioSettings(cfg.audio_sample_rate, 128, 204, cfg.audio_clip_duration, cfg.audio_clips,
                              cfg.audio_mean, cfg.audio_std)
        return ImageBindView(audio, cfg.video_clips, 2.0, cfg.video_fps, cfg.depth_scale)

    # --- running ---------------------------------------------------------------------------------
    def forward(self, media: torch.Tensor, modality: str) -> Features:
        """ImageBindModel.forward for one modality, keeping the trunk's tokens."""
        trunk = TRUNK[modality]
        clips = media.ndim >= 5  # audio (B, 3, 1, 128, 204), video (B, 15, 3, 2, 224, 224)
        batch = media.shape[0]
        flat = media.reshape(-1, *media.shape[2:]) if clips else media
        model = self.model
        prepared = model.modality_preprocessors[trunk](**{trunk: flat})
        hidden = model.modality_trunks[trunk](**prepared["trunk"])  # (B·S, N, C_trunk)
        embedding = model.modality_postprocessors[trunk](model.modality_heads[trunk](hidden, **prepared["head"]))
        if clips:
            embedding = embedding.reshape(batch, -1, embedding.shape[-1]).mean(dim=1)
            hidden = hidden.reshape(batch, -1, *hidden.shape[1:]).mean(dim=1)
        pooled = F.normalize(embedding, dim=-1)  # (B, C_out)
        if self.config.trunk_tokens is None:
            return Features(tokens=pooled.unsqueeze(1), pooled=pooled)
        if TRUNK[self.config.trunk_tokens] != trunk:
            raise MmcoreError(f"encoder '{self.name}' gives {self.config.trunk_tokens}'s trunk tokens to its "
                              f"projector (trunk_tokens); {modality} has its own trunk: encode it with another "
                              f"imagebind encoder, or drop trunk_tokens to give every modality its embedding")
        return Features(tokens=hidden, pooled=pooled)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """imagebind_huge.pth (ImageBindModel keys), or ImageBind-LLM's `image_bind.*`; Point-Bind's
        `*.point*` keys of imagebind_w3D.pth are dropped (no 3D branch here)."""
        state = {k.removeprefix("image_bind."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if ".point" not in k and not k.startswith("point_trunk.")}
        return {k if k.startswith("model.") else f"model.{k}": v for k, v in state.items()}
