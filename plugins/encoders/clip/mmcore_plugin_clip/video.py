"""Video frames for the `clip` encoder: read a video item, pick T frames as u-LLaVA's data code does.

u-LLaVA (OPPOMKLab/u-LLaVA 986c4fa, `dataset/processors/video_processor.py::VideoBaseProcessor`):
* `load_video` (decord) and `load_gif` (imageio, `pilmode='RGB'`) read a clip, then pick `n_frm` (8) frames:
  - "uniform" (`video_eval`): `np.arange(0, vlen, vlen / n_frm).astype(int)`;
  - "headtail" (`video_train`, `gif_train` — TGIF in stage I): `sorted(random.sample(range(vlen // 2), n // 2))`
    then `sorted(random.sample(range(vlen // 2, vlen), n // 2))`, Python's `random`.
* Two upstream edge cases are changed so that every item gives exactly T frames (its placeholder expands to a
  fixed T + 256 tokens): a clip shorter than T is sampled with the same uniform formula, which repeats frames
  (upstream's `n_frm = min(n_frm, vlen)` returns fewer frames and breaks its own token count), and the
  odd-T / float-step cases where `np.arange` yields T + 1 indices keep the first T. "headtail" on a clip too
  short for it (vlen // 2 < T // 2, where upstream's `random.sample` raises and the sample is skipped) falls
  back to "uniform"; for an odd T the tail gets the extra frame (upstream would return T − 1 frames).

An item is a video file (decoded with PyAV), a GIF (Pillow, as imageio's pillow plugin reads it), a folder
of frame images (sorted by name, numbers compared as numbers), or frames in memory: a list of PIL images or
(H, W, 3) uint8 arrays, or one (T, H, W, 3) uint8 array.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["FRAME_SUFFIXES", "Sampling", "read_frames", "sample_indices"]

Sampling = Literal["uniform", "headtail"]
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def sample_indices(length: int, count: int, sampling: Sampling = "uniform",
                   rng: random.Random | None = None) -> list[int]:
    """`count` frame indices of a clip of `length` frames, as u-LLaVA's `load_video` / `load_gif` (module doc)."""
    if length < 1:
        raise ValueError("the video has no frames")
    if sampling == "headtail" and length // 2 >= count // 2 and length - length // 2 >= count - count // 2:
        draw = rng or random  # upstream: the `random` module, seeded per data-loader worker by torch
        head = sorted(draw.sample(range(length // 2), count // 2))
        tail = sorted(draw.sample(range(length // 2, length), count - count // 2))
        return head + tail
    return [int(i) for i in np.arange(0, length, length / count).astype(int)[:count]]


def _natural(name: str) -> list[Any]:
    """Sort key: 'frame_2.png' before 'frame_10.png'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _pick(frames: Sequence[Any], count: int, sampling: Sampling) -> list[Any]:
    return [frames[i] for i in sample_indices(len(frames), count, sampling)]


def _folder(path: Path, count: int, sampling: Sampling) -> list[Any]:
    from PIL import Image

    names = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=lambda p: _natural(p.name))
    if not names:
        raise ValueError(f"{path}: a frame folder holds no images ({', '.join(FRAME_SUFFIXES)})")
    frames = []
    for frame in _pick(names, count, sampling):
        with Image.open(frame) as opened:
            frames.append(opened.convert("RGB"))
    return frames


def _gif(path: Path, count: int, sampling: Sampling) -> list[Any]:
    """u-LLaVA `load_gif`: imageio reads every frame through Pillow as RGB; here only the sampled ones."""
    from PIL import Image

    with Image.open(path) as opened:
        wanted = sample_indices(int(getattr(opened, "n_frames", 1)), count, sampling)
        frames = {}
        for index in sorted(set(wanted)):
            opened.seek(index)
            frames[index] = opened.convert("RGB")
    return [frames[i] for i in wanted]


def _video_file(path: Path, count: int, sampling: Sampling) -> list[Any]:
    """Decode with PyAV (u-LLaVA: decord `VideoReader` + `get_batch(indices)`), keeping the sampled frames."""
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:  # InvalidDataError, ...: not a video a decoder can read
        raise ValueError(f"{path}: not a readable video ({err})") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        length = int(stream.frames or 0)
        if length > 0:  # the container knows its frame count: decode up to the last sampled frame
            wanted = sample_indices(length, count, sampling)
            frames = _decode(container, stream, set(wanted), max(wanted))
            if len(frames) == len(set(wanted)):
                return [frames[i] for i in wanted]
            container.seek(0)
        everything = _decode(container, stream, None, None)  # unknown or wrong count: decode all
    return _pick([everything[i] for i in range(len(everything))], count, sampling)


def _decode(container: Any, stream: Any, wanted: set[int] | None, last: int | None) -> dict[int, Any]:
    import av

    frames: dict[int, Any] = {}
    try:
        for index, frame in enumerate(container.decode(stream)):
            if wanted is None or index in wanted:
                frames[index] = frame.to_image()  # RGB PIL image
            if last is not None and index >= last:
                break
    except av.error.FFmpegError as err:  # a damaged stream
        raise ValueError(f"video stream could not be decoded ({type(err).__name__}: {err})") from None
    return frames


def read_frames(item: Any, count: int, sampling: Sampling = "uniform") -> list[Any]:
    """`count` RGB frames (PIL images) of one video item (module doc); a bad item raises OSError/ValueError."""
    from PIL import Image

    if isinstance(item, (str, Path)):
        path = Path(item)
        if path.is_dir():
            return _folder(path, count, sampling)
        if not path.is_file():
            raise FileNotFoundError(2, "no such video", str(path))
        return _gif(path, count, sampling) if path.suffix.lower() == ".gif" else _video_file(path, count, sampling)
    if isinstance(item, np.ndarray) and item.ndim == 4:
        item = list(item)
    if not isinstance(item, (list, tuple)) or not item:
        raise ValueError(f"a video item is a file, a frame folder or a non-empty list of frames, not "
                         f"{type(item).__name__}")
    frames = []
    for frame in _pick(item, count, sampling):
        if isinstance(frame, Image.Image):
            frames.append(frame.convert("RGB"))
            continue
        array = np.asarray(frame)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"a video frame must be a PIL image or an (H, W, 3) uint8 array, got "
                             f"{array.dtype} {array.shape}")
        frames.append(Image.fromarray(array))
    return frames
