"""The clip encoder's video modality reproduces u-LLaVA's frame sampling and spatio-temporal pooling.

Pinned values come from running u-LLaVA 986c4fa's own code outside the repo (`dataset/processors/
video_processor.py::VideoBaseProcessor.load_video` over a stub decord reader whose frame i holds the value i;
`load_gif` with imageio 2.37 on the GIF `_moving_gif` writes; `models/ullava_core.py::encode_video` exec'd from
the file, on the tiny CLIP below).
"""

from __future__ import annotations

import hashlib
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from mmcore_plugin_clip.encoder import ClipEncoder, ClipEncoderConfig
from mmcore_plugin_clip.video import read_frames, sample_indices
from PIL import Image

from mmcore.kinds import BuildContext

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "image_size": 28, "patch_size": 14}

# load_video(n_frm=8, sampling="uniform"): the frame indices it returns, per clip length
UPSTREAM_UNIFORM = {8: [0, 1, 2, 3, 4, 5, 6, 7], 9: [0, 1, 2, 3, 4, 5, 6, 7], 10: [0, 1, 2, 3, 5, 6, 7, 8],
                    13: [0, 1, 3, 4, 6, 8, 9, 11], 16: [0, 2, 4, 6, 8, 10, 12, 14], 17: [0, 2, 4, 6, 8, 10, 12, 14],
                    31: [0, 3, 7, 11, 15, 19, 23, 27], 100: [0, 12, 25, 37, 50, 62, 75, 87],
                    241: [0, 30, 60, 90, 120, 150, 180, 210]}
UPSTREAM_SHORT = {1: [0], 3: [0, 1, 2], 7: [0, 1, 2, 3, 4, 5, 6]}  # upstream: fewer than 8 frames
# load_video(n_frm=8, sampling="headtail") right after random.seed(length)
UPSTREAM_HEADTAIL = {16: [2, 3, 5, 6, 8, 9, 11, 14], 17: [2, 5, 6, 7, 10, 12, 13, 14],
                     31: [0, 1, 6, 7, 15, 17, 19, 25], 100: [9, 11, 29, 49, 72, 75, 95, 96],
                     241: [13, 68, 88, 96, 165, 209, 225, 238]}
UPSTREAM_GIF_SHA256 = "c2fabe2d9732605ad27c82a4112543875600687b56b398d456ff31a1789f577d"  # (8, 16, 20, 3) uint8
# encode_video on (2, C=3, T=8, 28, 28) from generator seed 1: (2, 8 + 4, 32)
UPSTREAM_ABS_SUM = 174.70260620117188
UPSTREAM_ROWS = [[0.26907527446746826, 0.13562548160552979, -0.09889858961105347, 0.35114508867263794],
                 [0.23126167058944702, 0.1873134821653366, 0.26455169916152954, 0.2937168478965759],
                 [-0.19837072491645813, -0.35622942447662354, -0.314360648393631, -0.043716348707675934],
                 [-0.14584650099277496, -0.3589698374271393, -0.2836017906665802, -0.04676932841539383]]


def _encoder(**options: object) -> ClipEncoder:
    return ClipEncoder(ClipEncoderConfig.model_validate({"config": TINY, **options}), BuildContext(name="vision"))


def _oracle_encoder() -> ClipEncoder:
    """The oracle's weights: N(0, 0.1²) from generator seed 0, drawn in sorted key order."""
    encoder = _encoder().eval()
    shapes = {k: v.shape for k, v in encoder.vision.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    encoder.vision.load_state_dict({k: torch.randn(shapes[k], generator=generator) * 0.1 for k in sorted(shapes)})
    return encoder


def _moving_gif(path: Path) -> Path:
    """The oracle's GIF: 12 frames of 20 × 16, a red block moving right and a fixed blue one."""
    frames = []
    for t in range(12):
        image = Image.new("RGB", (20, 16), (245, 245, 245))
        image.paste((220, 40, 40), (t, 4, t + 6, 10))
        image.paste((40, 70, 220), (2, 12, 6, 15))
        frames.append(image)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return path


def test_video_tokens_are_upstream_encode_video() -> None:
    """T temporal (mean over patches) then N spatial (mean over frames) tokens equal u-LLaVA's encode_video."""
    video = torch.randn(2, 3, 8, 28, 28, generator=torch.Generator().manual_seed(1))  # upstream (B, C, T, H, W)
    with torch.no_grad():
        tokens = _oracle_encoder()(video.permute(0, 2, 1, 3, 4), "video").tokens  # ours: (B, T, 3, S, S)
    assert tokens.shape == (2, 12, 32)
    assert abs(float(tokens.abs().sum()) - UPSTREAM_ABS_SUM) < 1e-3
    rows = torch.stack([tokens[0, 0, :4], tokens[0, 7, :4], tokens[1, 8, -4:], tokens[1, 11, -4:]])
    assert torch.allclose(rows, torch.tensor(UPSTREAM_ROWS), atol=1e-5)


def test_video_spec_is_frames_plus_patches() -> None:
    """The video feature spec has T + N tokens and no grid; the image spec is unchanged."""
    encoder = _encoder(video_frames=6)
    assert encoder.feature_spec("image") == encoder.output_spec
    video = encoder.feature_spec("video")
    assert (video.num_tokens, video.grid, video.dim) == (6 + 4, None, 32)
    assert encoder.input_shape("video") == (6, 3, 28, 28)


def test_uniform_sampling_is_upstream_load_video() -> None:
    """Uniform indices equal load_video's; a clip shorter than T repeats upstream's frames to give T."""
    for length, expected in UPSTREAM_UNIFORM.items():
        assert sample_indices(length, 8) == expected, length
    for length, upstream in UPSTREAM_SHORT.items():
        ours = sample_indices(length, 8)
        assert len(ours) == 8 and sorted(set(ours)) == upstream and ours == sorted(ours)


def test_headtail_sampling_draws_as_upstream() -> None:
    """"headtail" draws the same indices as upstream from the same `random` state."""
    for length, expected in UPSTREAM_HEADTAIL.items():
        random.seed(length)
        assert sample_indices(length, 8, "headtail") == expected, length
    assert sample_indices(5, 8, "headtail") == sample_indices(5, 8)  # too short: uniform


def test_gif_frames_are_upstream_load_gif(tmp_path: Path) -> None:
    """A GIF's 8 sampled RGB frames are the ones u-LLaVA's load_gif (imageio) returns."""
    frames = read_frames(_moving_gif(tmp_path / "moving.gif"), 8)
    stacked = np.stack([np.asarray(f) for f in frames])
    assert stacked.shape == (8, 16, 20, 3)
    assert hashlib.sha256(stacked.tobytes()).hexdigest() == UPSTREAM_GIF_SHA256


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_video_file_decodes_the_sampled_frames(tmp_path: Path, suffix: str) -> None:
    """A video file decodes with PyAV to the uniformly sampled frames (frame count unknown: .mkv; known: .avi)."""
    import av

    path = tmp_path / f"clip{suffix}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv444p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 12, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    levels = [round(float(np.asarray(f).mean()) / 12) for f in read_frames(path, 8)]
    assert levels == sample_indices(20, 8) == [0, 2, 5, 7, 10, 12, 15, 17]


def test_frame_folder_is_read_in_natural_order(tmp_path: Path) -> None:
    """A folder of frames is read in name order with numbers compared as numbers (frame_2 before frame_10)."""
    for i in range(16):
        Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    reds = [np.asarray(f)[0, 0, 0] // 10 for f in read_frames(tmp_path, 8)]
    assert reds == [0, 2, 4, 6, 8, 10, 12, 14]


def test_view_gives_T_frames_through_the_clip_processor() -> None:
    """The view turns an in-memory frame list into (T, 3, S, S): each frame as the image view would."""
    frames = [Image.new("RGB", (40, 20), (20 * i, 0, 0)) for i in range(12)]
    encoder = _encoder(video_aspect_ratio="pad")
    view = pickle.loads(pickle.dumps(encoder.media_view()))
    pixels, meta = view(frames, "video")
    assert pixels.shape == (8, 3, 28, 28) and meta == {}
    chosen = sample_indices(12, 8)
    assert torch.equal(pixels[3], view(frames[chosen[3]], "image")[0])
    squashed = _encoder().media_view()(frames, "video")[0]  # default: u-LLaVA's squash to S × S
    assert not torch.equal(squashed[3], pixels[3])


@pytest.mark.parametrize("item", [[], "missing.mp4", np.zeros((4, 8, 8), np.uint8), [np.zeros((8, 8), np.float32)]])
def test_bad_video_item_is_a_readable_error(item: object) -> None:
    """A bad video item raises OSError or ValueError (the data path counts and skips it), never a crash."""
    with pytest.raises((OSError, ValueError)):
        _encoder().media_view()(item, "video")


def test_corrupt_video_file_is_a_value_error(tmp_path: Path) -> None:
    """A file that is not a video is a ValueError naming it."""
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match=r"broken\.mp4"):
        read_frames(path, 8)


def test_ullava_clip_video_is_264_tokens_on_meta() -> None:
    """u-LLaVA's CLIP-L/14-224 takes 8 frames to 8 + 256 = 264 tokens of width 1024 (upstream-systems.md §5.1)."""
    config = ClipEncoderConfig(source="openai/clip-vit-large-patch14")
    encoder = ClipEncoder(config, BuildContext(name="vision", device=torch.device("meta")))
    spec = encoder.feature_spec("video")
    assert (spec.num_tokens, spec.dim) == (264, 1024) and encoder.input_shape("video") == (8, 3, 224, 224)
