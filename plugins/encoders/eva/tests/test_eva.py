"""The eva-vit encoder is MiniGPT-v2's EVA-ViT-g exactly: structure, keys, outputs, preprocessing.

Pinned values come from running upstream's code (Vision-CAIR/MiniGPT-4 d94738a `minigpt4/models/eva_vit.py`,
`minigpt4/processors/blip_processors.py`) outside the repo; see conftest.py for the tiny tower and weights.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def _sha(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize(("model", "params", "grid"), [("eva_vit_g_448", 986_975_872, (32, 32)),
                                                       ("eva_vit_g", 985_894_528, (16, 16))])
def test_eva_vit_g_has_upstream_parameter_count(build_eva: Callable[..., Any], model: str, params: int,
                                                grid: tuple[int, int]) -> None:
    """create_eva_vit_g(img_size=448 / 224) has 986,975,872 / 985,894,528 parameters; ln_vision adds 2,816."""
    encoder = build_eva("meta", model=model, config={}, precision="fp16")
    assert sum(p.numel() for p in encoder.parameters()) == params
    assert encoder.output_spec.grid == grid and encoder.output_spec.dim == 1408
    with_ln = build_eva("meta", model=model, config={}, ln_vision=True)
    assert sum(p.numel() for p in with_ln.parameters()) == params + 2_816


def test_tower_keys_are_upstream_keys(build_eva: Callable[..., Any]) -> None:
    """The tower's 511 state-dict keys are upstream's, in upstream's order (oracle: sha256 of the key list)."""
    keys = list(build_eva("meta", model="eva_vit_g_448", config={}).visual_encoder.state_dict())
    assert len(keys) == 511
    assert keys[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    assert digest == "93c097bd62730e2ba15d76f595c17cea59c9bf0640057b82a11324d1e2b9df2d"


def test_every_timm_eva_model_builds_with_a_grid(build_eva: Callable[..., Any]) -> None:
    """Every preset and EVA / EVA02 / EVA-CLIP model timm ships builds offline on meta and reports its grid."""
    from mmcore_plugin_eva.presets import model_names

    shipped = {"eva_giant_patch14_clip_224", "eva02_large_patch14_clip_336", "eva02_base_patch14_448"}
    assert shipped <= set(model_names())
    for name in model_names():
        spec = build_eva("meta", model=name, config={}).output_spec
        assert spec.grid is not None and spec.grid[0] * spec.grid[1] == spec.num_tokens, name


def test_forward_equals_timm_directly(tiny_eva: Callable[..., Any], pixels: torch.Tensor) -> None:
    """Same weights: the encoder's tokens are timm's `forward_features` bit for bit (max |diff| 0)."""
    import timm
    from mmcore_plugin_eva.presets import timm_kwargs

    encoder = tiny_eva(select_feature="cls_patch")
    name, kwargs = timm_kwargs("eva_vit_g", None, encoder.config.config)
    reference = timm.create_model(name, pretrained=False, **kwargs).eval()
    reference.load_state_dict(encoder.visual_encoder.state_dict())
    with torch.no_grad():
        assert torch.equal(encoder(pixels, "image").tokens, reference.forward_features(pixels))


def test_forward_matches_upstream_eva_vit(tiny_eva: Callable[..., Any], pixels: torch.Tensor) -> None:
    """fp32 patch tokens equal upstream VisionTransformer's [:, 1:] on the same weights (oracle, 1e-5)."""
    with torch.no_grad():
        tokens = tiny_eva()(pixels, "image").tokens  # (2, 16, 64)
    assert tokens.shape == (2, 16, 64)
    assert abs(float(tokens.abs().sum()) - 4036.18994140625) < 1e-2
    expected = torch.tensor([[-1.479527473449707, 0.37310877442359924, -0.43775641918182373],
                             [-1.0341285467147827, 4.362969398498535, 0.6054152250289917]])
    assert torch.allclose(torch.stack([tokens[0, 0, :3], tokens[1, 15, -3:]]), expected, atol=1e-5)


def test_ln_vision_is_fp32_layernorm_then_cls_dropped(tiny_eva: Callable[..., Any], pixels: torch.Tensor) -> None:
    """ln_vision = LayerNorm(C, eps 1e-5) on every token in fp32 (MiniGPT-v2), then CLS dropped; grid (h, w)."""
    plain, normed = tiny_eva(select_feature="cls_patch"), tiny_eva(ln_vision=True)
    assert normed.ln_vision.eps == 1e-5 and normed.ln_vision.weight.dtype == torch.float32
    with torch.no_grad():
        expected = F.layer_norm(plain(pixels, "image").tokens.float(), (64,), eps=1e-5)[:, 1:]
        features = normed(pixels, "image")
    assert torch.equal(features.tokens, expected) and features.grid == (4, 4)


def test_view_is_blip2_image_processor(build_eva: Callable[..., Any]) -> None:
    """The view is BLIP-2's blip2_image_eval/train at 448: squash-resize bicubic, no crop, CLIP mean/std
    (oracle: sha256 of upstream's output on a 97×61 image); it pickles for data-loader workers."""
    from PIL import Image

    view = pickle.loads(pickle.dumps(build_eva("meta", model="eva_vit_g_448", config={}).media_view()))
    image = Image.fromarray((np.arange(61 * 97 * 3).reshape(61, 97, 3) * 7 % 256).astype(np.uint8))
    pixels, meta = view(image, "image")
    assert pixels.shape == (3, 448, 448) and meta == {}
    assert _sha(pixels) == "278fca68aa3d08f3f363dd8e396aa401d2297bf2f2154d13fc0f5a622f1a08f8"


def test_unknown_model_and_timm_keys_get_did_you_mean() -> None:
    """A misspelt model or timm argument is refused with the nearest name."""
    from mmcore_plugin_eva.encoder import EvaConfig
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="did you mean 'eva_vit_g_448'"):
        EvaConfig(model="eva_vit_g_488")
    with pytest.raises(ValidationError, match="did you mean 'depth'"):
        EvaConfig(config={"dpeth": 2})
    with pytest.raises(ValidationError, match="no head and no pooling"):
        EvaConfig(config={"num_classes": 10})
