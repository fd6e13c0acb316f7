"""The sam-mask head against segment_anything's own modules: preprocessing, masks, batching, dtype policy."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from mmcore_plugin_sam.head import unpad_masks


def _library_masks(kit: Any, head: Any, img: Any, prompts: torch.Tensor) -> torch.Tensor:
    """segment_anything's own path for one image and (k, P) prompt embeddings: ResizeLongestSide →
    Sam.preprocess → image_encoder → prompt_encoder (+ the prompts after its sparse embeddings) →
    mask_decoder(multimask_output=False) → Sam.postprocess_masks → (k, H, W)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    sam = kit.library_sam(head)
    resized = ResizeLongestSide(head.arch.image_size).apply_image(img)
    pixels = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float())
    with torch.no_grad():
        embedding = sam.image_encoder(pixels)
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        sparse = torch.cat([sparse.expand(len(prompts), -1, -1), prompts.unsqueeze(1)], dim=1)
        low_res, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=False)
        return sam.postprocess_masks(low_res, resized.shape[:2], img.shape[:2])[:, 0]


def test_view_is_sams_own_preprocessing(kit: Any, head: Any) -> None:
    """The head's view is ResizeLongestSide + Sam.preprocess (mean/std, zero pad bottom-right), bit for bit,
    with the original and resized sizes as metadata."""
    from segment_anything.utils.transforms import ResizeLongestSide

    img = kit.image(30, 50, seed=1)
    pixels, meta = head.media_view()(img, "image")
    resized = ResizeLongestSide(64).apply_image(img)
    expected = kit.library_sam(head).preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())[0]
    assert torch.equal(pixels, expected) and pixels.shape == (3, 64, 64)
    assert meta == {"original_size": (30, 50), "input_size": (38, 64)}


def test_masks_equal_segment_anythings_sam_path(kit: Any, head: Any) -> None:
    """For the same prompt embeddings, masks at the original size equal the library's Sam path (1e-5),
    for a batch of images with 0, 2 and 1 prompts."""
    images = [kit.image(20, 36, 0), kit.image(40, 28, 1), kit.image(33, 33, 2)]
    sample_index = torch.tensor([1, 1, 2])
    hidden = torch.randn(3, 48)
    with torch.no_grad():
        out = head(hidden, sample_index, kit.media_for(head, images), None)
        prompts = head.seg_projector(hidden)
    masks = unpad_masks(out.predictions)
    expected = [*_library_masks(kit, head, images[1], prompts[:2]), *_library_masks(kit, head, images[2], prompts[2:])]
    assert [tuple(m.shape) for m in masks] == [(40, 28), (40, 28), (33, 33)]
    for got, want in zip(masks, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    assert out.predictions["sizes"].tolist() == [[40, 28], [40, 28], [33, 33]] and out.losses == {}


def test_image_encoder_runs_once_per_image_with_prompts(kit: Any, head: Any) -> None:
    """The image encoder sees each image that has prompts exactly once (one batched call), however many
    prompts it has; images without prompts are not encoded."""
    seen: list[int] = []
    head.image_encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    images = [kit.image(24, 24, i) for i in range(4)]
    sample_index = torch.tensor([0, 0, 0, 2, 3, 3])
    with torch.no_grad():
        out = head(torch.randn(6, 48), sample_index, kit.media_for(head, images), None)
    assert seen == [3] and out.predictions["masks"].shape[0] == 6
    with torch.no_grad():
        head(torch.randn(0, 48), torch.zeros(0, dtype=torch.long), kit.media_for(head, images), None)
    assert seen == [3]  # no prompt in the batch: no encoder call


def test_frozen_image_encoder_builds_no_graph(kit: Any, head: Any) -> None:
    """With the image encoder frozen (requires_grad off, as the trainer sets it) its output needs no grad,
    while the projector and mask decoder get gradients."""
    head.image_encoder.requires_grad_(False)
    embeddings = head.image_embeddings(torch.randn(1, 3, 64, 64))
    assert not embeddings.requires_grad
    images = [kit.image(24, 30, 0)]
    target = {"masks": [torch.rand(24, 30) > 0.5]}
    out = head(torch.randn(1, 48), torch.tensor([0]), kit.media_for(head, images), [target])
    sum(out.losses.values()).backward()
    assert head.seg_projector[0].weight.grad is not None
    assert head.mask_decoder.output_upscaling[0].weight.grad is not None


def test_pip_dense_pe_fails_in_bf16_and_the_head_keeps_fp32(kit: Any, head: Any) -> None:
    """Pip SAM's get_dense_pe fails on a bf16 prompt encoder; the head declares fp32 as its compute dtype
    and, under bf16 autocast with bf16 hidden states, gives exactly its fp32 result on those inputs."""
    with pytest.raises(RuntimeError, match="dtype"):
        copy.deepcopy(head.prompt_encoder).to(torch.bfloat16).get_dense_pe()
    assert head.compute_dtype == torch.float32
    images = [kit.image(24, 30, 0), kit.image(30, 20, 1)]
    hidden = torch.randn(3, 48).to(torch.bfloat16)
    sample_index = torch.tensor([0, 1, 1])
    targets = [{"masks": [torch.rand(24, 30) > 0.5]}, {"masks": [torch.rand(30, 20) > 0.5] * 2}]
    media = kit.media_for(head, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(hidden, sample_index, media, targets)
    full = head(hidden.float(), sample_index, media, targets)
    assert mixed.predictions["masks"].dtype == torch.float32
    assert torch.equal(mixed.predictions["masks"], full.predictions["masks"])
    assert all(torch.equal(mixed.losses[k], full.losses[k]) for k in full.losses)


def test_bf16_image_encoder_option(kit: Any) -> None:
    """encoder_precision = "bf16" runs the frozen image encoder under bf16 autocast (u-LLaVA's precision):
    fp32 embeddings out, close to the fp32 encoder's."""
    fp32, bf16 = kit.make_head(), kit.make_head(encoder_precision="bf16")
    pixels = fp32.media_view()(kit.image(40, 50, 3), "image")[0][None]
    with torch.no_grad():
        a, b = fp32.image_embeddings(pixels), bf16.image_embeddings(pixels)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert torch.allclose(a, b, atol=0.1), (a - b).abs().max()


def test_view_is_picklable_and_small(head: Any) -> None:
    """The head's view crosses into spawned data-loader workers without weights."""
    import pickle

    data = pickle.dumps(head.media_view())
    assert len(data) < 1000 and pickle.loads(data).image_size == 64
