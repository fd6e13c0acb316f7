"""Shared pieces of the sam-mask tests: the tiny head, segment_anything's own `Sam` with its weights, a batch."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from mmcore_plugin_sam.head import SamMaskHead

from mmcore.testing import build_for_test


def make_head(**options: Any) -> SamMaskHead:
    """The conformance-size head (tiny_config, LLM width 48) with a trigger id, optionally re-configured."""
    head = build_for_test("head", SamMaskHead)
    if options:
        config = SamMaskHead.Config.model_validate({**SamMaskHead.tiny_config(), **options})
        state = head.state_dict()
        head = SamMaskHead(config, _ctx())
        head.load_state_dict(state)
    head.trigger_id = 7
    return head.eval()


def _ctx() -> Any:
    from mmcore.kinds import BuildContext

    return BuildContext(name="test-head", llm_hidden_size=48)


def library_sam(head: SamMaskHead) -> Any:
    """segment_anything's `Sam` built from the library's classes with the head's numbers, loaded (strictly)
    with the head's SAM weights: the reference path."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    arch = head.arch
    side = arch.image_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(depth=arch.encoder_depth, embed_dim=arch.encoder_width, img_size=arch.image_size,
                                      mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      num_heads=arch.encoder_heads, patch_size=arch.patch_size, qkv_bias=True,
                                      use_rel_pos=True, global_attn_indexes=arch.global_attn_layers,
                                      window_size=arch.window_size, out_chans=arch.prompt_dim),
        prompt_encoder=PromptEncoder(embed_dim=arch.prompt_dim, image_embedding_size=(side, side),
                                     input_image_size=(arch.image_size, arch.image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=arch.decoder_depth, embedding_dim=arch.prompt_dim, mlp_dim=arch.decoder_mlp_dim,
            num_heads=arch.decoder_heads), transformer_dim=arch.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256))
    sam.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("seg_projector.")})
    return sam.eval()


def image(height: int, width: int, seed: int) -> np.ndarray:
    """A random (H, W, 3) uint8 RGB image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def media_for(head: Any, images: list[np.ndarray], rows: list[int] | None = None) -> dict[str, Any]:
    """`Batch.media` as the Processor's collate builds it: the head's own view of each image, stacked."""
    from mmcore.sequence import MediaBatch

    view = head.media_view()
    viewed = [view(img, "image") for img in images]
    rows = rows if rows is not None else list(range(len(images)))
    return {"image": MediaBatch({head.view_key: torch.stack([p for p, _ in viewed])}, torch.tensor(rows),
                                {head.view_key: [m for _, m in viewed]})}


@pytest.fixture
def head() -> SamMaskHead:
    return make_head()


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The helpers above, for test modules (conftest is not importable under --import-mode=importlib)."""
    return SimpleNamespace(make_head=make_head, library_sam=library_sam, image=image, media_for=media_for)
