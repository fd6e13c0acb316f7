"""ImageBind's preprocessing per modality, as one picklable `MediaView` run in data-loader workers.

* image: `imagebind/data.py::load_and_transform_vision_data` — Resize(224, bicubic), CenterCrop(224), CLIP
  mean/std (torchvision's own transforms) → (3, 224, 224).
* video: `load_and_transform_video_data` on decoded frames — 5 clips of 2 s (ConstantClipsPerVideoSampler),
  each clip's frames as decord's `get_clip` picks them (indices ⌈fps·start⌉ … ⌈fps·end⌉ − 1), 2 frames
  uniformly subsampled, /255, short side scaled to 224 (bilinear), CLIP mean/std, 3 spatial crops →
  (15, 3, 2, 224, 224). An item is `(frames, fps)`: a (T, H, W, 3) uint8 array or a list of images.
* audio: `load_and_transform_audio_data` (see `audio.py`) → (3, 1, 128, 204).
* depth, thermal: ImageBind's `data.py` has no loader for them; the trunks take one 224 × 224 channel. A
  single-channel image or a 2-D array is resized (short side 224, bicubic) and centre-cropped; images are
  scaled to [0, 1] (ToTensor), float arrays are taken as given (ImageBind trains depth as disparity);
  `depth_scale` divides depth.
* imu: a (6, T) array (accelerometer + gyroscope, ImageBind's Ego4D layout) cut or zero-padded to 2000 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcore.kinds import MediaView, Viewed
from mmcore_plugin_imagebind.audio import AudioSettings, clip_timepoints, load_waveform, melspec_clips

__all__ = ["CLIP_MEAN", "CLIP_STD", "ImageBindView"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIZE = 224
IMU_STEPS = 2000


def _open_image(item: Any, mode: str) -> Any:
    from PIL import Image

    if isinstance(item, (str, Path)):
        with open(item, "rb") as handle:  # FileNotFoundError names the file
            return Image.open(handle).convert(mode)
    if isinstance(item, np.ndarray):
        return Image.fromarray(item).convert(mode) if item.dtype == np.uint8 else item
    return item.convert(mode)


def _resize_crop(image: Any) -> torch.Tensor:
    """PIL image → (C, 224, 224) in [0, 1] after Resize(224, bicubic) + CenterCrop(224)."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(SIZE), transforms.ToTensor()])(image)


def _one_channel(item: Any, scale: float) -> torch.Tensor:
    """A single-channel map (image file, PIL image or 2-D array) → (1, 224, 224) float / scale."""
    if isinstance(item, np.ndarray) and item.dtype != np.uint8:
        if item.ndim != 2:
            raise ValueError(f"a depth/thermal array must be 2-D (H, W), got shape {item.shape}")
        tensor = torch.from_numpy(item.astype(np.float32))[None, None]
        h, w = tensor.shape[-2:]
        size = (SIZE, max(SIZE, round(w * SIZE / h))) if h <= w else (max(SIZE, round(h * SIZE / w)), SIZE)
        tensor = torch.nn.functional.interpolate(tensor, size=size, mode="bicubic", align_corners=False)[0]
        top, left = (tensor.shape[1] - SIZE) // 2, (tensor.shape[2] - SIZE) // 2
        return tensor[:, top : top + SIZE, left : left + SIZE] / scale
    return _resize_crop(_open_image(item, "L")) / scale


def _short_side_scale(clip: torch.Tensor, size: int) -> torch.Tensor:
    """pytorchvideo `short_side_scale` (C, T, H, W), bilinear."""
    _, _, h, w = clip.shape
    new_h, new_w = (math.floor(h / w * size), size) if w < h else (size, math.floor(w / h * size))
    return torch.nn.functional.interpolate(clip, size=(new_h, new_w), mode="bilinear", align_corners=False)


def _spatial_crops(clip: torch.Tensor, size: int) -> list[torch.Tensor]:
    """ImageBind `SpatialCrop(224, 3)` via `uniform_crop`: left/top, centre, right/bottom crops."""
    h, w = clip.shape[-2:]
    crops = []
    for index in (0, 1, 2):
        y, x = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
        if h > w:
            y = 0 if index == 0 else (h - size if index == 2 else y)
        else:
            x = 0 if index == 0 else (w - size if index == 2 else x)
        crops.append(clip[:, :, y : y + size, x : x + size])
    return crops


@dataclass(frozen=True)
class ImageBindView(MediaView):
    """ImageBind's data.py for every modality; small and picklable (no weights)."""

    audio: AudioSettings
    video_clips: int = 5
    video_clip_duration: float = 2.0
    video_fps: float = 30.0
    depth_scale: float = 1.0

    def __call__(self, item: Any, modality: str) -> Viewed:
        if modality == "image":
            tensor = _resize_crop(_open_image(item, "RGB"))
            mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
            return (tensor - mean) / std, {}
        if modality == "audio":
            waveform, rate = load_waveform(item)
            return melspec_clips(waveform, rate, self.audio), {}
        if modality == "video":
            return self._video(item), {}
        if modality == "depth":
            return _one_channel(item, self.depth_scale), {}
        if modality == "thermal":
            return _one_channel(item, 1.0), {}
        if modality == "imu":
            return self._imu(item), {}
        raise ValueError(f"imagebind has no view for '{modality}'")

    def _video(self, item: Any) -> torch.Tensor:
        frames, fps = item if isinstance(item, tuple) else (item, self.video_fps)
        if isinstance(frames, (list, tuple)):
            frames = np.stack([np.asarray(_open_image(f, "RGB")) for f in frames])
        video = torch.as_tensor(np.asarray(frames, dtype=np.uint8))  # (T, H, W, 3)
        if video.ndim != 4 or video.shape[-1] != 3 or len(video) == 0:
            raise ValueError(f"video frames of shape {tuple(video.shape)}: give (T, H, W, 3) uint8 frames, fps")
        mean, std = torch.tensor(CLIP_MEAN)[:, None, None, None], torch.tensor(CLIP_STD)[:, None, None, None]
        clips = []
        for start, end in clip_timepoints(len(video) / float(fps), self.video_clip_duration, self.video_clips):
            first, stop = math.ceil(float(fps) * start), min(math.ceil(float(fps) * end), len(video))
            if stop <= first:
                raise ValueError(f"no frames between {float(start):.2f}s and {float(end):.2f}s of the video")
            clip = video[first:stop].permute(3, 0, 1, 2).to(torch.float32)  # (C, t, H, W)
            picks = torch.linspace(0, clip.shape[1] - 1, 2).clamp(0, clip.shape[1] - 1).long()
            clip = _short_side_scale(clip.index_select(1, picks) / 255.0, SIZE)
            clips.append((clip - mean) / std)
        return torch.stack([crop for clip in clips for crop in _spatial_crops(clip, SIZE)])  # (15, 3, 2, 224, 224)

    @staticmethod
    def _imu(item: Any) -> torch.Tensor:
        data = torch.as_tensor(np.load(item) if isinstance(item, (str, Path)) else np.asarray(item),
                               dtype=torch.float32)
        if data.ndim != 2 or data.shape[0] != 6:
            raise ValueError(f"IMU data of shape {tuple(data.shape)}: give (6, T) accelerometer + gyroscope rows")
        steps = data.shape[1]
        return data[:, :IMU_STEPS] if steps >= IMU_STEPS else torch.nn.functional.pad(data, (0, IMU_STEPS - steps))
