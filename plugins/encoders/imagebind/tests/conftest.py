"""Shared fixtures: deterministic test signals written as 16-bit PCM WAV (the same the audio oracle used)."""

from __future__ import annotations

import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


def signal(seconds: float, rate: int, channels: int) -> np.ndarray:
    """(channels, samples) in [-1, 1]: tones, a chirp and a DC offset on the second channel."""
    t = np.arange(int(seconds * rate)) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.25 * np.sin(2 * np.pi * 1234.5 * t + 0.3) \
        + 0.1 * np.sin(2 * np.pi * (200 + 300 * t) * t)
    right = 0.3 * np.sin(2 * np.pi * 660 * t) + 0.05
    return np.stack([left, right][:channels])


def write_wav(path: Path, seconds: float, rate: int, channels: int) -> Path:
    pcm = np.round(signal(seconds, rate, channels) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.T.tobytes())
    return path


@pytest.fixture
def wav_file(tmp_path: Path) -> Callable[..., Path]:
    """`wav_file(name, seconds, rate, channels)` → a WAV of `signal` in tmp_path."""
    return lambda name, seconds, rate, channels: write_wav(tmp_path / f"{name}.wav", seconds, rate, channels)
