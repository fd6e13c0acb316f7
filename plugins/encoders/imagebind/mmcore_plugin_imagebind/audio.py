"""ImageBind's audio preprocessing without torchaudio, written in torch (`imagebind/data.py`
`load_and_transform_audio_data`, next-systems.md §2.4): decode → resample to 16 kHz → 3 clips of 2 s
chosen as pytorchvideo's `ConstantClipsPerVideoSampler` does → per clip: DC removal, Kaldi fbank (128 mel
bins, 25/10 ms, hanning, htk-compatible, dither 0), pad/cut to 204 frames → normalise (−4.268, 9.138).

* `resample`: torchaudio's `functional.resample` (sinc_interp_hann, lowpass width 6, rolloff 0.99).
* `kaldi_fbank`: torchaudio's `compliance.kaldi.fbank` with ImageBind's options and Kaldi's defaults
  (snip_edges, pre-emphasis 0.97, frame DC removal, power spectrum, low 20 Hz, high = Nyquist, FFT 512).
  At 16 kHz with 128 bins mel bin 3 holds no FFT bin: its energy is 0 and every frame gets log(eps)
  (float32 eps: −15.9424) there, as ImageBind's features always do (kaldi-native-fbank refuses this setting).
* `clip_timepoints`: pytorchvideo's `ConstantClipsPerVideoSampler` in exact fractions.

`tests/test_audio.py` pins all three against torchaudio 2.11's and pytorchvideo 0.1.5's own code.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["AudioSettings", "clip_timepoints", "kaldi_fbank", "load_waveform", "melspec_clips", "resample"]

EPS = float(torch.finfo(torch.float32).eps)  # torchaudio's EPSILON, the floor before the log


def clip_timepoints(duration: float, clip_duration: float, clips: int) -> list[tuple[Fraction, Fraction]]:
    """(start, end) in seconds of each clip: `clips` starts spread evenly over [0, duration − clip], stopping
    early when a start would pass the last possible one; a short file repeats (0, clip_duration)."""
    length = Fraction(clip_duration)
    last_start = Fraction(max(duration - length, 0))
    step = Fraction(last_start, max(clips - 1, 1))
    points = []
    for index in range(clips):
        start = step * index
        points.append((start, start + length))
        if index + 1 >= clips or step * (index + 1) > last_start:
            break
    return points


@lru_cache(maxsize=8)
def _sinc_kernel(orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """The (new, 1, 2·width + orig) band-limited interpolation filters, Hann-windowed (float32 throughout, as
    torchaudio computes them for a float32 waveform)."""
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    taps = torch.arange(-width, width + orig, dtype=torch.float32)[None, None] / orig
    time = torch.arange(0, -new, -1, dtype=torch.float32)[:, None, None] / new + taps  # (new, 1, taps)
    time = (time * base).clamp(-width_zeros, width_zeros)
    window = torch.cos(time * math.pi / width_zeros / 2) ** 2
    time = time * math.pi
    kernel = torch.where(time == 0, torch.ones((), dtype=time.dtype), time.sin() / time)
    return kernel * (window * (base / orig)), width


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """(channels, samples) at `orig_freq` → (channels, ceil(samples · new / orig)) at `new_freq`."""
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    kernel, width = _sinc_kernel(orig, new)
    flat = waveform.reshape(-1, waveform.shape[-1])
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    out = torch.nn.functional.conv1d(padded[:, None], kernel.to(flat.dtype), stride=orig)  # (C, new, frames)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    length = math.ceil(new * flat.shape[-1] / orig)
    return out[:, :length].reshape(*waveform.shape[:-1], -1)


def _mel(freq: torch.Tensor | float) -> Any:
    return 1127.0 * (1.0 + torch.as_tensor(freq) / 700.0).log()


@lru_cache(maxsize=4)
def _mel_filters(bins: int, fft_size: int, sample_rate: int, low: float = 20.0) -> torch.Tensor:
    """(bins, fft_size // 2 + 1) triangular filters on the mel scale (Kaldi, no VTLN), last column 0."""
    high = 0.5 * sample_rate
    low_mel, high_mel = 1127.0 * math.log(1.0 + low / 700.0), 1127.0 * math.log(1.0 + high / 700.0)
    delta = (high_mel - low_mel) / (bins + 1)
    index = torch.arange(bins).unsqueeze(1)
    left, centre, right = (low_mel + (index + shift) * delta for shift in (0.0, 1.0, 2.0))
    mel = _mel((sample_rate / fft_size) * torch.arange(fft_size / 2)).unsqueeze(0)  # (1, fft_size / 2)
    rising, falling = (mel - left) / (centre - left), (right - mel) / (right - centre)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.nn.functional.pad(filters.to(torch.float32), (0, 1))


def kaldi_fbank(waveform: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128) -> torch.Tensor:
    """(channels, samples) → (frames, num_mel_bins) log mel energies of the first channel (25 ms windows every
    10 ms, snip_edges)."""
    signal = waveform[0]
    size, shift = int(sample_rate * 0.025), int(sample_rate * 0.010)
    if signal.shape[0] < size:
        raise ValueError(f"audio clip of {signal.shape[0]} samples is shorter than one 25 ms window ({size})")
    count = 1 + (signal.shape[0] - size) // shift
    frames = signal.as_strided((count, size), (shift * signal.stride(0), signal.stride(0)))  # (m, 400)
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove_dc_offset
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - 0.97 * previous  # pre-emphasis, the first sample against itself
    frames = frames * torch.hann_window(size, periodic=False, dtype=frames.dtype)
    fft_size = 1 << (size - 1).bit_length()  # 512
    frames = torch.nn.functional.pad(frames, (0, fft_size - size))
    power = torch.fft.rfft(frames).abs().pow(2.0)  # (m, 257)
    energies = power @ _mel_filters(num_mel_bins, fft_size, sample_rate).to(power.dtype).T
    return torch.clamp(energies, min=EPS).log()  # (m, bins); mel bin 3 is always log(eps)


@dataclass(frozen=True)
class AudioSettings:
    """ImageBind's audio options (`load_and_transform_audio_data`'s defaults)."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 204
    clip_duration: float = 2.0
    clips_per_video: int = 3
    mean: float = -4.268
    std: float = 9.138


def melspec_clips(waveform: torch.Tensor, sample_rate: int, settings: AudioSettings) -> torch.Tensor:
    """(channels, samples) float audio → (clips, 1, num_mel_bins, target_length) normalised spectrograms."""
    rate = settings.sample_rate
    waveform = resample(waveform.to(torch.float32), sample_rate, rate).clone()
    duration = waveform.shape[1] / rate
    clips = []
    for start, end in clip_timepoints(duration, settings.clip_duration, settings.clips_per_video):
        clip = waveform[:, int(start * rate) : int(end * rate)]
        # Quirk (ImageBind `waveform2melspec`): `waveform -= waveform.mean()` runs in place on a view of the whole
        # file, so overlapping clips see the samples earlier clips already shifted; the mean spans every channel.
        clip -= clip.mean()
        spec = kaldi_fbank(clip, rate, settings.num_mel_bins).T  # (bins, frames)
        gap = settings.target_length - spec.shape[1]
        spec = torch.nn.functional.pad(spec, (0, gap)) if gap > 0 else spec[:, : settings.target_length]
        clips.append((spec.unsqueeze(0) - settings.mean) / settings.std)
    return torch.stack(clips)


def _read_wav(path: Path) -> tuple[torch.Tensor, int]:
    with wave.open(str(path), "rb") as wav:
        width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        kind = np.int16 if width == 2 else np.int32
        data = np.frombuffer(raw, dtype=kind).astype(np.float32) / float(2 ** (8 * width - 1))
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24-bit
        data = value.astype(np.float32) / float(2**23)
    else:
        raise ValueError(f"{path}: {8 * width}-bit WAV samples are not supported")
    return torch.from_numpy(data.reshape(-1, channels).T.copy()), rate  # (channels, samples)


def load_waveform(item: Any) -> tuple[torch.Tensor, int]:
    """An audio item → ((channels, samples) float32 in [-1, 1], sample rate). Items: a PCM `.wav` path, or a
    `(waveform, sample_rate)` pair with a (samples,) or (channels, samples) array or tensor."""
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(2, "no such file", str(path))
        if path.suffix.lower() != ".wav":
            raise ValueError(f"{path}: only PCM .wav files are decoded here; convert it (e.g. ffmpeg -i IN OUT.wav)")
        try:
            return _read_wav(path)
        except (wave.Error, EOFError) as err:
            raise ValueError(f"{path}: not a readable PCM WAV file ({err})") from None
    if isinstance(item, tuple) and len(item) == 2:
        samples, rate = item
        tensor = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
        tensor = tensor.unsqueeze(0) if tensor.ndim == 1 else tensor
        if tensor.ndim != 2 or int(rate) <= 0:
            raise ValueError(f"audio array of shape {tuple(tensor.shape)} at {rate} Hz: give (samples,) or "
                             f"(channels, samples) and a positive sample rate")
        return tensor, int(rate)
    raise ValueError(f"audio item of type {type(item).__name__}: give a .wav path or a (waveform, sample_rate) pair")
