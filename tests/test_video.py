"""Video through the whole product: per-modality token counts, `<video>` in the sequence, the shapes video task."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcore.builtins.datasets.shapes import COLOURS, ShapesConfig, SyntheticShapes
from mmcore.errors import ManifestError
from mmcore.kinds import BuildContext
from mmcore.testing import tiny_manifest

VIDEO_ENCODER = 'modalities = ["image", "video"]\nvideo_frames = 4'


def _shapes(tasks: list[str], **options: object) -> SyntheticShapes:
    return SyntheticShapes(ShapesConfig.model_validate({"size": 8, "tasks": tasks, **options}), BuildContext(name="s"))


@pytest.fixture
def video_model(write_manifest: Callable[[str], Path]) -> object:
    from mmcore.assembly import assemble

    return assemble(write_manifest(tiny_manifest("type = \"mlp\"", VIDEO_ENCODER)), device="cpu")


def test_token_counts_are_per_modality(video_model: object) -> None:
    """One CLIP + mlp: an image is its N patches, a video T + N tokens (u-LLaVA: 8 + 256)."""
    assert video_model.tokens_per_item == {"image": 16, "video": 4 + 16}  # type: ignore[attr-defined]


def test_video_sample_runs_through_the_model(video_model: object) -> None:
    """A `<video>` sample expands to T + N media tokens that carry the projected pooled features."""
    from mmcore.data import Processor

    assembly: object = video_model
    model = assembly.model.eval()  # type: ignore[attr-defined]
    processor = Processor.for_model(model, 256, {"plain": assembly.template("plain")})  # type: ignore[attr-defined]
    sample = _shapes(["video/motion"], image_size=28)[0]
    batch = processor.batch([sample], "plain", train=True)
    assert int((batch.media_token_index >= 0).sum()) == 20
    assert batch.media["video"].views["encoders.vision"].shape == (1, 4, 3, 28, 28)
    with torch.no_grad():
        out = model(batch)
        expected = model.projectors["vision"](model.encoders["vision"](batch.media["video"].views["encoders.vision"],
                                                                        "video"))
        spliced = model.embed(batch)[batch.media_token_index >= 0]
    assert torch.isfinite(out.loss)
    assert torch.allclose(spliced, expected[0], atol=1e-6)


def test_projector_that_cannot_take_video_is_one_line(write_manifest: Callable[[str], Path]) -> None:
    """A fixed-grid projector given video features is one line naming its table, before any training."""
    from mmcore.assembly import assemble

    path = write_manifest(tiny_manifest("type = \"c-abstractor\"\nnum_queries = 4\ndepth = 1", VIDEO_ENCODER))
    with pytest.raises(ManifestError, match=r"\[model.projectors.vision\] type cannot take the video features"):
        assemble(path)


def test_existing_tasks_unchanged_by_the_video_task() -> None:
    """Adding `video/motion` to a dataset leaves every other task's samples as they were."""
    plain = _shapes(["vqa/colour", "mask"])
    mixed = _shapes(["vqa/colour", "mask", "video/motion"])
    for scene in range(8):
        for offset in range(2):
            a, b = plain[scene * 2 + offset], mixed[scene * 3 + offset]
            assert a.conversation == b.conversation and a.id == b.id
            assert np.array_equal(np.asarray(a.media["image"][0]), np.asarray(b.media["image"][0]))


def test_the_shape_moves_the_way_the_answer_says() -> None:
    """Each video's shape travels in the answered direction; all four directions occur; lengths vary."""
    steps = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    seen, lengths = set(), set()
    for sample in _shapes(["video"], size=24):
        frames = sample.media["video"][0]
        assert sample.conversation[0].text.endswith("<video>")  # u-LLaVA appends the video to the first turn
        centres = []
        for frame in (frames[0], frames[-1]):
            ys, xs = np.nonzero((np.asarray(frame) == COLOURS[sample.conversation[0].text.split()[4]]).all(axis=2))
            centres.append(np.array([xs.mean(), ys.mean()]))
        moved = centres[1] - centres[0]
        direction = sample.conversation[1].text
        assert float(np.dot(moved, steps[direction])) > 0.4 * 64 / 2, (sample.id, moved)
        seen.add(direction)
        lengths.add(len(frames))
    assert seen == set(steps) and len(lengths) > 2


def test_video_family_expands_and_is_not_a_default() -> None:
    """`tasks = ["video"]` means video/motion; the default tasks stay without video."""
    assert ShapesConfig(tasks=["video"]).tasks == ["video/motion"]
    assert not any(t.startswith("video") for t in ShapesConfig().tasks)
