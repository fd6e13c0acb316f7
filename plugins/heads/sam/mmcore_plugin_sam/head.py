"""`sam-mask`: u-LLaVA's mask head (`models/ullava.py`, OPPOMKLab/u-LLaVA 986c4fa) on the unmodified pip
segment-anything 1.0 modules — no vendored copy, no patch.

    hidden before [SEG] (K, D) → seg_projector: Linear(D, D), ReLU, Linear(D, P), Dropout(0) → (K, P)
    image (3, S, S) ─ image_encoder (frozen, once per image) → (n, P, S/16, S/16)
    per image with k prompts: sparse = cat([prompt_encoder(None, None, None).sparse (k, 0, P), prompts (k, 1, P)])
        → mask_decoder(embedding (1, …), get_dense_pe(), sparse, no-mask dense, multimask_output=False)
        → (k, 1, S/4, S/4) → Sam.postprocess_masks(input size, original size) → (k, H, W) logits

u-LLaVA patched SAM's PromptEncoder to take `text_embeds`; concatenating them after the (empty) sparse
prompt embeddings outside the library is bit-identical (next-systems.md §3.1). Pip's MaskDecoder takes one
image embedding with N prompts, so the decoder loops over images; the image encoder runs once per image
that has prompts, in one batched call.

Trainable as u-LLaVA (`train_ullava.py` 247-261): the seg projector and the mask decoder except its
`iou_prediction_head`; the image encoder and prompt encoder stay frozen (`frozen_modules`). The head
computes in fp32 whatever the stage's precision (`compute_dtype`): pip's `get_dense_pe` fails on a bf16
gaussian matrix, and the mask losses sum ~10⁶ pixels. The frozen image encoder may run under bf16 autocast
(`encoder_precision = "bf16"`, u-LLaVA's precision).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, cast

import torch
from torch import nn

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, ComponentConfig, Head, HeadOutput, MediaView, Overlay, match_targets
from mmcore_plugin_sam.config import SamArchitecture, SamMaskHeadConfig
from mmcore_plugin_sam.losses import mask_losses
from mmcore_plugin_sam.metrics import MaskIoU
from mmcore_plugin_sam.view import SamView

__all__ = ["SamMaskHead", "build_sam_modules", "unpad_masks"]


def build_sam_modules(arch: SamArchitecture) -> tuple[nn.Module, nn.Module, nn.Module]:
    """segment_anything's ImageEncoderViT, PromptEncoder and MaskDecoder as its `_build_sam` builds them."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    image_encoder = ImageEncoderViT(
        depth=arch.encoder_depth, embed_dim=arch.encoder_width, img_size=arch.image_size, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=arch.encoder_heads, patch_size=arch.patch_size,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=arch.global_attn_layers,
        window_size=arch.window_size, out_chans=arch.prompt_dim)
    side = arch.embedding_size
    prompt_encoder = PromptEncoder(embed_dim=arch.prompt_dim, image_embedding_size=(side, side),
                                   input_image_size=(arch.image_size, arch.image_size), mask_in_chans=16)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=arch.decoder_depth, embedding_dim=arch.prompt_dim,
                                      mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_heads),
        transformer_dim=arch.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256)
    return image_encoder, prompt_encoder, mask_decoder


def unpad_masks(predictions: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The head's padded (K, H_max, W_max) logits → K logits maps at their own original (H, W)."""
    return [predictions["masks"][k, :h, :w] for k, (h, w) in enumerate(predictions["sizes"].tolist())]


class SamMaskHead(Head):
    Config: ClassVar[type[ComponentConfig]] = SamMaskHeadConfig
    compute_dtype: ClassVar[torch.dtype | None] = torch.float32
    frozen_modules: ClassVar[tuple[str, ...]] = ("image_encoder", "prompt_encoder", "mask_decoder.iou_prediction_head")
    view_modalities: ClassVar[tuple[str, ...]] = ("image",)
    cached_module: ClassVar[str | None] = "image_encoder"  # `cache_features = true`: image embeddings per image
    target_key: ClassVar[str] = "masks"  # Sample.targets["masks"]: one per trigger, in order
    config: SamMaskHeadConfig
    # segment_anything's own modules (the library ships no type information)
    image_encoder: Any
    prompt_encoder: Any
    mask_decoder: Any

    def __init__(self, config: SamMaskHeadConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.arch = config.architecture()
        width, prompt_dim = self.llm_hidden_size, self.arch.prompt_dim
        with ctx.device:
            self.image_encoder, self.prompt_encoder, self.mask_decoder = build_sam_modules(self.arch)
            # u-LLaVA init_seg_modules: Linear(D, D), ReLU, Linear(D, out_dim = 256), Dropout(0)
            self.seg_projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, prompt_dim),
                                               nn.Dropout(0.0))

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """A 64-px SAM (4 × 4 image embedding), one 32-wide encoder block, a 32-wide one-layer decoder."""
        return {"preset": "vit_b", "image_size": 64, "encoder_width": 32, "encoder_depth": 1, "encoder_heads": 2,
                "global_attn_layers": [0], "prompt_dim": 32, "decoder_depth": 1, "decoder_mlp_dim": 64,
                "decoder_heads": 2}

    @property
    def view_key(self) -> str:
        """Where the collated batch keeps this head's view: `media["image"].views[view_key]`."""
        return f"heads.{self.name}"

    def media_view(self, **preprocessing: Any) -> MediaView:
        return self.keyed_view(SamView(self.arch.image_size))  # keyed: items carry their feature-cache key

    # --- checkpoints -----------------------------------------------------------------------------
    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """u-LLaVA's `visual_model.*` + `seg_projector.*` (its other keys belong to other components), or a
        SAM checkpoint (`sam_vit_h_4b8939.pth`: image_encoder / prompt_encoder / mask_decoder), whose missing
        seg projector keeps its initialisation as in u-LLaVA's stage II (`load_visual_checkpoint`)."""
        own = self.state_dict()
        if any(k.startswith("visual_model.") for k in state):
            return {k.removeprefix("visual_model."): v for k, v in state.items()
                    if k.startswith(("visual_model.", "seg_projector."))}
        projector = {k: v for k, v in own.items() if k.startswith("seg_projector.")}
        if set(state) == set(own) - set(projector):
            return {**state, **projector}
        return super().adapt_state_dict(state)

    # --- running ---------------------------------------------------------------------------------
    def image_embeddings(self, pixels: torch.Tensor, metadata: Sequence[dict[str, Any]] = ()) -> torch.Tensor:
        """(n, 3, S, S) SAM-preprocessed images → (n, P, S/16, S/16). One call per batch of images, the only place
        the image encoder runs; a frozen encoder runs without autograd. With `cache_features = true` the images'
        view metadata (their cache keys) lets embeddings computed before be read back instead."""
        return cast(torch.Tensor, self.through_cache(pixels, metadata, self._encode_images))

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        frozen = not any(p.requires_grad for p in self.image_encoder.parameters())
        bf16 = self.config.encoder_precision == "bf16"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen), \
                torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=bf16):
            return cast(torch.Tensor, self.image_encoder(pixels)).float()

    def forward(self, hidden: torch.Tensor, sample_index: torch.Tensor, media: dict[str, Any],
                targets: Any) -> HeadOutput:
        """hidden (K, D) before each [SEG], sample_index (K,) → masks at original size (+ weighted losses)."""
        dtype = self.compute_dtype or hidden.dtype
        with torch.autocast(hidden.device.type, enabled=False):  # the dtype policy, whoever calls the head
            masks, scores = self._masks(hidden.to(dtype), sample_index, media)
            gts = match_targets(targets, self.target_key, sample_index, self.name, self.trigger_token)
            losses = self._losses(masks, gts) if gts is not None and masks else {}
        sizes = torch.tensor([list(m.shape) for m in masks], dtype=torch.long).view(-1, 2)
        return HeadOutput(predictions={"masks": _pad(masks, hidden), "sizes": sizes.to(hidden.device),
                                       "scores": scores, "sample_index": sample_index}, losses=losses)

    def _masks(self, hidden: torch.Tensor, sample_index: torch.Tensor,
               media: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per prompt, (H, W) logits at its image's original size; and its IoU prediction (K,)."""
        count = hidden.shape[0]
        if count == 0:
            return [], hidden.new_zeros(0)
        prompts = self.seg_projector(hidden)  # (K, P)
        items = self._image_of_prompts(sample_index, media)  # (K,) item of the head's view per prompt
        images = media["image"]
        needed = sorted(set(items))
        embeddings = self.image_embeddings(images.views[self.view_key][needed].to(prompts.dtype),
                                           [images.meta[self.view_key][i] for i in needed])  # (n, P, h, w)
        dense_pe = self.prompt_encoder.get_dense_pe()  # (1, P, h, w)
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)  # (1, 0, P), (1, P, h, w)
        masks: list[torch.Tensor | None] = [None] * count
        scores = prompts.new_zeros(count)
        for j, item in enumerate(needed):
            chosen = [k for k in range(count) if items[k] == item]
            text = torch.cat([sparse.expand(len(chosen), -1, -1), prompts[chosen].unsqueeze(1)], dim=1)  # (k, 1, P)
            low_res, iou = self.mask_decoder(image_embeddings=embeddings[j : j + 1], image_pe=dense_pe,
                                             sparse_prompt_embeddings=text, dense_prompt_embeddings=dense,
                                             multimask_output=False)  # (k, 1, S/4, S/4), (k, 1)
            meta = images.meta[self.view_key][item]
            full = self._postprocess(low_res, tuple(meta["input_size"]), tuple(meta["original_size"]))[:, 0]
            for position, k in enumerate(chosen):
                masks[k] = full[position]
            scores[chosen] = iou[:, 0]
        return [m for m in masks if m is not None], scores

    def _postprocess(self, low_res: torch.Tensor, input_size: tuple[int, ...],
                     original_size: tuple[int, ...]) -> torch.Tensor:
        """segment_anything's own `Sam.postprocess_masks` (it reads only `self.image_encoder.img_size`)."""
        from segment_anything.modeling import Sam

        return cast(torch.Tensor, Sam.postprocess_masks(cast(Any, self), low_res, input_size, original_size))

    def _image_of_prompts(self, sample_index: torch.Tensor, media: dict[str, Any]) -> list[int]:
        """The head-view item each prompt segments: the first image of its sample (u-LLaVA: one per sample)."""
        images = media.get("image")
        if images is None or self.view_key not in images.views:
            raise MmcoreError(f"head '{self.name}': the batch holds no '{self.view_key}' image view; build batches "
                              f"with the run's Processor, which runs the head's own SAM preprocessing")
        first: dict[int, int] = {}
        for item, row in enumerate(images.sample_index.tolist()):
            first.setdefault(int(row), item)
        rows = sample_index.tolist()
        missing = sorted({r for r in rows if r not in first})
        if missing:
            raise MmcoreError(f"head '{self.name}': batch row(s) {missing} have a '{self.trigger_token}' trigger but "
                              f"no image to segment")
        return [first[r] for r in rows]

    def _losses(self, masks: list[torch.Tensor], gts: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """u-LLaVA: BCE × 2 and dice × 0.5 (scale 1000, eps 1e-6), each a mean over the batch's masks."""
        for k, (mask, gt) in enumerate(zip(masks, gts, strict=True)):
            if tuple(gt.shape) != tuple(mask.shape):
                raise MmcoreError(f"head '{self.name}': mask target {k} is {tuple(gt.shape)} but its image is "
                                  f"{tuple(mask.shape)} (H, W); masks must have the original image's size")
        bce, dice = mask_losses(masks, gts, self.config.dice_scale, self.config.dice_eps)
        weight = self.config.loss_weight
        return {"bce": weight * self.config.bce_weight * bce, "dice": weight * self.config.dice_weight * dice}

    # --- evaluation and tests --------------------------------------------------------------------
    def metrics(self) -> MaskIoU:
        """An accumulator of RES cIoU / gIoU over this head's predictions (`update(predictions, targets)`)."""
        return MaskIoU()

    def overlays(self, predictions: dict[str, Any]) -> list[Overlay]:
        """One sample's masks (logits > 0, u-LLaVA's threshold) at its image's size, in [SEG] order."""
        return [Overlay("mask", (mask > 0).cpu().numpy(), self.name) for mask in unpad_masks(predictions)]

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance inputs: `batch_size` random images of different sizes through the head's own view,
        0…k prompts per image (the first image has none), one mask target per prompt."""
        import numpy as np

        from mmcore.sequence import MediaBatch

        view = self.media_view()
        counts = [i % 3 for i in range(batch_size)]  # prompts per sample: 0, 1, 2, 0, ...
        viewed, targets = [], []
        for i, count in enumerate(counts):
            size = (24 + 8 * i, 40 - 4 * i)  # (H, W)
            pixels = (torch.rand(*size, 3) * 255).to(torch.uint8).numpy()
            viewed.append(view(pixels, "image"))
            targets.append({"masks": [np.asarray(torch.rand(size) > 0.5) for _ in range(count)]})
        media = {"image": MediaBatch({self.view_key: torch.stack([p for p, _ in viewed])},
                                     torch.arange(batch_size), {self.view_key: [m for _, m in viewed]})}
        sample_index = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)], dtype=torch.long)
        return torch.randn(len(sample_index), self.llm_hidden_size), sample_index, media, targets


def _pad(masks: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """K (H_k, W_k) maps → (K, max H, max W), zero beyond each map (crop with `sizes`)."""
    height = max((m.shape[0] for m in masks), default=0)
    width = max((m.shape[1] for m in masks), default=0)
    out = like.new_zeros((len(masks), height, width), dtype=torch.float32)
    for k, mask in enumerate(masks):
        out[k, : mask.shape[0], : mask.shape[1]] = mask
    return out
