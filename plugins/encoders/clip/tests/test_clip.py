"""The clip encoder reproduces LLaVA's feature selection and preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmcore_plugin_clip.encoder import ClipEncoder, ClipEncoderConfig, expand_to_square
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from mmcore.kinds import BuildContext

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "image_size": 28, "patch_size": 14}


@pytest.fixture(scope="module")
def saved_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(folder)
    return folder


def _encoder(**options: object) -> ClipEncoder:
    return ClipEncoder(ClipEncoderConfig.model_validate(options), BuildContext(name="vision"))


def test_patch_features_are_layer_minus_2_without_cls(saved_clip: Path) -> None:
    """select_layer -2, patch: hidden_states[-2][:, 1:] of CLIPVisionModel (LLaVA-1.5)."""
    encoder = _encoder(source=str(saved_clip)).eval()
    reference = CLIPVisionModel.from_pretrained(str(saved_clip)).eval()
    pixels = torch.randn(2, 3, 28, 28)
    expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    features = encoder(pixels, "image")
    assert torch.equal(features.tokens, expected)
    assert features.grid == (2, 2) and encoder.output_spec.num_tokens == 4


def test_cls_patch_keeps_cls_and_reports_no_grid(saved_clip: Path) -> None:
    """cls_patch keeps CLS: N + 1 tokens, and no grid for grid-shaped projectors."""
    encoder = _encoder(source=str(saved_clip), select_feature="cls_patch", select_layer=-1)
    assert encoder.output_spec.num_tokens == 5 and encoder.output_spec.grid is None
    assert encoder(torch.randn(1, 3, 28, 28), "image").tokens.shape == (1, 5, 32)


def test_pad_to_square_uses_the_clip_mean_colour() -> None:
    """LLaVA expand2square: the image centred on a square filled with int(mean * 255)."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = expand_to_square(image, (122, 116, 104))
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (122, 116, 104) and square.getpixel((20, 20)) == (255, 0, 0)
    view = _encoder(config=TINY).media_view()
    pixels, _ = view(image, "image")
    assert pixels.shape == (3, 28, 28)
    mean_pixel = torch.tensor([122, 116, 104]) / 255.0  # normalises to ≈ 0 in the padded band
    normalised = (mean_pixel - torch.tensor(view.processor.image_mean)) / torch.tensor(view.processor.image_std)
    assert torch.allclose(pixels[:, 0, 14], normalised.float(), atol=0.02)


def test_square_mode_skips_padding() -> None:
    """image_aspect_ratio = "square" (LLaVA pretraining) resizes and centre-crops without padding."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    pixels, _ = _encoder(config=TINY, image_aspect_ratio="square").media_view()(image, "image")
    red = (1.0 - 0.48145466) / 0.26862954
    assert torch.allclose(pixels[0], torch.full((28, 28), red), atol=0.02)


def test_view_is_picklable_and_takes_stage_overrides() -> None:
    """The view pickles (data-loader workers) and a stage's override changes it, not the encoder."""
    import pickle

    encoder = _encoder(config=TINY)
    view = pickle.loads(pickle.dumps(encoder.media_view(image_aspect_ratio="square")))
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    assert torch.equal(view(image, "image")[0], encoder.media_view(image_aspect_ratio="square")(image, "image")[0])
    assert encoder.config.image_aspect_ratio == "pad" and view.aspect == "square"


def test_preset_builds_on_meta_without_weights() -> None:
    """The ViT-L/14-336 preset builds on meta with 303,507,456 parameters and a 24×24 grid."""
    config = ClipEncoderConfig(source="openai/clip-vit-large-patch14-336")
    encoder = ClipEncoder(config, BuildContext(name="vision", device=torch.device("meta")))
    assert sum(p.numel() for p in encoder.parameters()) == 303_507_456
    assert encoder.output_spec.grid == (24, 24)


def test_preset_without_weights_cannot_materialise() -> None:
    """Materialising a preset whose weights are not here says how to fix it."""
    from mmcore.errors import MmcoreError

    with pytest.raises(MmcoreError, match="weights are not on this machine"):
        _encoder(source="openai/clip-vit-large-patch14-336")
