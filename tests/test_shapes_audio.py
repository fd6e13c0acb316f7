"""synthetic-shapes' audio track: a tone whose pitch names the colour, so audio questions have a right answer."""

from __future__ import annotations

import numpy as np

from mmcore.builtins.datasets.shapes import TONES, ShapesConfig, SyntheticShapes
from mmcore.kinds import BuildContext


def _dataset(tasks: list[str], **options: object) -> SyntheticShapes:
    return SyntheticShapes(ShapesConfig.model_validate({"size": 6, "tasks": tasks, **options}), BuildContext(name="s"))


def test_tone_pitch_names_the_answer() -> None:
    """The audio's strongest frequency is the answer colour's tone (within the 2 % detune)."""
    for sample in _dataset(["audio/colour", "audiovisual/colour"]):
        wave, rate = sample.media["audio"][0]
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.argmax(spectrum) * rate / len(wave)
        assert abs(peak / TONES[sample.conversation[1].text] - 1) < 0.03, (sample.id, peak)
        assert ("image" in sample.media) == (sample.task == "audiovisual/colour")
        assert sample.conversation[0].text.count("<audio>") == 1


def test_existing_tasks_unchanged_by_the_audio_tasks() -> None:
    """Adding the audio tasks to a dataset leaves every other task's samples as they were."""
    plain = _dataset(["vqa/colour", "caption"])
    mixed = _dataset(["vqa/colour", "caption", "audio/colour", "audiovisual/colour"])
    for scene in range(6):
        for offset in range(2):
            a, b = plain[scene * 2 + offset], mixed[scene * 4 + offset]
            assert a.conversation == b.conversation and a.id == b.id
            assert np.array_equal(np.asarray(a.media["image"][0]), np.asarray(b.media["image"][0]))


def test_audio_family_expands() -> None:
    """`tasks = ["audio"]` means the audio-only task; `vqa` still expands to the vqa tasks alone."""
    assert ShapesConfig(tasks=["audio"]).tasks == ["audio/colour"]
    assert not any(t.startswith("audio") for t in ShapesConfig(tasks=["vqa"]).tasks)
