"""Audio preprocessing equals ImageBind's `data.py` run with torchaudio's and pytorchvideo's own code.

`tests/data/audio_oracle.npz` was written by running imagebind-unofficial 0.1.1's `imagebind/data.py`
(`load_and_transform_audio_data`, `get_clip_timepoints`) with torchaudio 2.11.0's `compliance/kaldi.py` and
`functional/functional.py::resample` (the wheel unpacked outside the repository, never installed) and the
`pytorchvideo/data/clip_sampling.py` of the commit ImageBind pins (28fe037d), on the signals of
`conftest.py`. Spectrograms are pinned on every 7th frame, plus every row's mean over all frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from mmcore_plugin_imagebind.audio import (
    AudioSettings,
    clip_timepoints,
    kaldi_fbank,
    load_waveform,
    melspec_clips,
    resample,
)

ORACLE = np.load(Path(__file__).parent / "data" / "audio_oracle.npz")
FILES = {"stereo44k": (3.3, 44100, 2), "short16k": (1.3, 16000, 1), "long22k": (7.31, 22050, 1)}


@pytest.mark.parametrize("name", list(FILES))
def test_spectrograms_equal_imagebind(name: str, wav_file: Callable[..., Path]) -> None:
    """WAV → (3, 1, 128, 204) equals ImageBind's load_and_transform_audio_data (resampled, clipped, fbank)."""
    waveform, rate = load_waveform(wav_file(name, *FILES[name]))
    ours = melspec_clips(waveform, rate, AudioSettings())
    assert ours.shape == (3, 1, 128, 204)
    np.testing.assert_allclose(ours[..., ::7].numpy(), ORACLE[f"{name}/spec"], atol=2e-4, rtol=0)
    np.testing.assert_allclose(ours.mean(dim=-1).numpy(), ORACLE[f"{name}/row_means"], atol=2e-5, rtol=0)


def test_constant_log_eps_row() -> None:
    """Mel bin 3 holds no FFT bin at 16 kHz / 128 bins: every frame has log(float32 eps) there, as torchaudio."""
    clip = torch.from_numpy(np.sin(np.arange(32000) * 0.05).astype(np.float32))[None]
    ours = kaldi_fbank(clip - clip.mean())
    assert ours.shape == (198, 128)  # 1 + (32000 - 400) // 160 frames
    assert torch.all(ours[:, 3] == math.log(torch.finfo(torch.float32).eps))
    np.testing.assert_allclose(ours.numpy(), ORACLE["fbank/plain"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("rates", ["44100-16000", "8000-16000", "48000-16000"])
def test_resample_equals_torchaudio(rates: str) -> None:
    """Band-limited sinc (Hann) resampling gives torchaudio.functional.resample's samples."""
    orig, new = (int(r) for r in rates.split("-"))
    x = torch.from_numpy(np.sin(np.arange(1000) * 0.37).astype(np.float32)
                         + np.cos(np.arange(1000) ** 1.3 * 0.01).astype(np.float32))[None]
    np.testing.assert_allclose(resample(x, orig, new).numpy(), ORACLE[f"resample/{rates}"], atol=2e-6, rtol=0)


def test_clip_timepoints_equal_pytorchvideo() -> None:
    """Three 2 s clips spread as ConstantClipsPerVideoSampler does (a short file repeats its first clip)."""
    for duration, expected in zip(ORACLE["clips/durations"], ORACLE["clips/points"], strict=True):
        ours = [[float(a), float(b)] for a, b in clip_timepoints(float(duration), 2.0, 3)]
        assert ours == [p for p in expected.tolist() if p != [-1.0, -1.0]]


def test_bad_audio_items_are_value_errors(tmp_path: Path) -> None:
    """A non-WAV file, a broken WAV and a wrong array are ValueErrors naming the item (a skipped sample)."""
    (tmp_path / "a.mp3").write_bytes(b"x")
    (tmp_path / "b.wav").write_bytes(b"RIFFxxxx")
    for item, words in [(tmp_path / "a.mp3", "only PCM .wav"), (tmp_path / "b.wav", "not a readable PCM WAV"),
                        ((np.zeros((2, 2, 2)), 16000), r"give \(samples,\)"), (3, "give a .wav path")]:
        with pytest.raises(ValueError, match=words):
            load_waveform(item)
    with pytest.raises(FileNotFoundError):
        load_waveform(tmp_path / "missing.wav")
