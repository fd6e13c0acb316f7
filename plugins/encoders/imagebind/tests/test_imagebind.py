"""The imagebind encoder: Meta's model code (counts, outputs equal to ImageBindModel.forward), its views."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmcore_plugin_imagebind.encoder import TINY, ImageBindConfig, ImageBindEncoder

from mmcore.kinds import BuildContext


def _encoder(device: str = "cpu", **options: object) -> ImageBindEncoder:
    torch.manual_seed(0)
    config = ImageBindConfig.model_validate({"architecture": TINY, **options})
    return ImageBindEncoder(config, BuildContext(name="bind", device=torch.device(device)))


def test_imagebind_huge_counted_on_meta() -> None:
    """imagebind_huge builds on the meta device with 1,200,781,057 parameters (next-systems.md §2.1)."""
    encoder = ImageBindEncoder(ImageBindConfig(), BuildContext(name="bind", device=torch.device("meta")))
    assert sum(p.numel() for p in encoder.parameters()) == 1_200_781_057
    assert all(p.is_meta for p in encoder.parameters())
    assert encoder.output_spec.pooled_dim == 1024


def test_meta_build_leaves_torch_alone() -> None:
    """The drop-path fix is scoped to imagebind's transformer module: torch.linspace itself is unchanged."""
    _encoder("meta")
    with torch.device("meta"):
        assert torch.linspace(0, 1, 3).is_meta
    assert sys.modules["imagebind.models.transformer"].torch is not torch


def test_package_init_never_runs() -> None:
    """imagebind's package __init__ (which imports torchaudio through imagebind.data) is never executed."""
    _encoder("meta")
    assert "imagebind.data" not in sys.modules and "torchaudio" not in sys.modules


@pytest.mark.parametrize("modality", ["image", "video", "audio", "depth", "thermal", "imu"])
def test_embedding_equals_imagebind_forward(modality: str) -> None:
    """`pooled` is F.normalize(ImageBindModel.forward({m: x})[m]), clips averaged as ImageBind does."""
    encoder = _encoder()
    media = torch.randn(2, *encoder.input_shape(modality))
    key = {"image": "vision", "video": "vision"}.get(modality, modality)
    with torch.no_grad():
        ours = encoder(media, modality)
        theirs = F.normalize(encoder.model({key: media})[key], dim=-1)
    torch.testing.assert_close(ours.pooled, theirs, atol=1e-5, rtol=1e-5)
    assert ours.tokens.shape == (2, 1, 32)


def test_trunk_tokens_for_token_projectors() -> None:
    """trunk_tokens = "image" gives the vision trunk's 257 tokens; another trunk's modality is a one-line error."""
    from mmcore.errors import MmcoreError

    encoder = _encoder(trunk_tokens="image")
    assert encoder.output_spec.num_tokens == 257 and encoder.output_spec.dim == 32
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 224, 224), "image").tokens.shape == (1, 257, 32)
        with pytest.raises(MmcoreError, match="audio has its own trunk"):
            encoder(torch.randn(1, 3, 1, 128, 204), "audio")


def test_views_shapes_and_pickle(wav_file: Callable[..., Path]) -> None:
    """Each modality's view gives the trunk's input layout, and the view pickles (data-loader workers)."""
    from PIL import Image

    encoder = _encoder()
    view = pickle.loads(pickle.dumps(encoder.media_view()))
    items = {"image": Image.new("RGB", (300, 200), (200, 10, 10)), "audio": wav_file("a", 3.3, 44100, 2),
             "video": (np.zeros((40, 240, 320, 3), dtype=np.uint8), 10.0),
             "depth": np.random.default_rng(0).random((120, 160)).astype(np.float32),
             "thermal": Image.new("L", (64, 64), 90), "imu": np.zeros((6, 1500), dtype=np.float32)}
    for modality, item in items.items():
        tensor, _ = view(item, modality)
        assert tuple(tensor.shape) == encoder.input_shape(modality), modality


def test_image_view_is_imagebinds_transform() -> None:
    """image: Resize(224, bicubic) + CenterCrop(224) + CLIP normalisation (data.py load_and_transform_vision_data)."""
    from PIL import Image
    from torchvision import transforms

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (180, 260, 3), dtype=np.uint8))
    reference = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224),
        transforms.ToTensor(), transforms.Normalize(mean=(0.48145466, 0.4578275, 0.40821073),
                                                    std=(0.26862954, 0.26130258, 0.27577711))])(image)
    torch.testing.assert_close(_encoder().media_view()(image, "image")[0], reference)


def test_checkpoint_keys_map(tmp_path: Path) -> None:
    """imagebind_huge.pth keys, ImageBind-LLM's `image_bind.` prefix and Point-Bind's extra keys all load."""
    from mmcore.checkpoint import load_into

    source, target = _encoder(), _encoder()
    with torch.no_grad():
        source.model.modality_heads["vision"][2].weight.add_(1.0)
    state = {f"image_bind.{k}": v for k, v in source.model.state_dict().items()}
    state["image_bind.modality_trunks.point.blocks.0.weight"] = torch.zeros(1)
    state["image_bind.point_trunk.encoder.weight"] = torch.zeros(1)
    load_into(target, target.adapt_state_dict(state), "ImageBind-LLM")
    assert torch.equal(target.model.modality_heads["vision"][2].weight, source.model.modality_heads["vision"][2].weight)


def test_architecture_typo_is_named() -> None:
    """An unknown ImageBindModel argument gets a did-you-mean."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="did you mean 'vision_num_blocks'"):
        ImageBindConfig.model_validate({"architecture": {"vision_num_block": 2}})


def _frames(t: int, h: int, w: int) -> np.ndarray:
    ti, y, x = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([(x * 3 + ti * 7) % 256, (y * 5 + ti * 11) % 256, (x * y + ti * 13) % 256], -1).astype(np.uint8)


@pytest.mark.parametrize(("name", "shape"), [("wide", (37, 120, 160, 10.0)), ("tall", (61, 200, 150, 24.0))])
def test_video_view_equals_imagebind(name: str, shape: tuple[int, int, int, float]) -> None:
    """video (frames, fps) → (15, 3, 2, 224, 224) equal to ImageBind's load_and_transform_video_data.

    `tests/data/video_oracle.npz`: imagebind-unofficial 0.1.1's data.py run with pytorchvideo@28fe037d's
    EncodedVideoDecord (a fake decord reader serving these frames), clip sampler and transforms; pinned on
    every 16th pixel of every clip and crop, plus each channel's mean."""
    oracle = np.load(Path(__file__).parent / "data" / "video_oracle.npz")
    t, h, w, fps = shape
    ours = _encoder().media_view()((_frames(t, h, w), fps), "video")[0]
    np.testing.assert_allclose(ours[..., ::16, ::16].numpy(), oracle[f"{name}/sub"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.mean(dim=(1, 3, 4)).numpy(), oracle[f"{name}/means"], atol=1e-5, rtol=0)
