"""The sam-mask head inside an assembled model, fed by the core's one data path (Processor → Batch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmcore.kinds import Sample, Turn

HEAD = ('\n[model.heads.seg]\ntype = "sam-mask"\npreset = "vit_b"\nimage_size = 64\nencoder_width = 32\n'
        'encoder_depth = 1\nencoder_heads = 2\nglobal_attn_layers = [0]\nprompt_dim = 32\ndecoder_depth = 1\n'
        'decoder_mlp_dim = 64\ndecoder_heads = 2\n')


def _sample(index: int, size: tuple[int, int], masks: int) -> Sample:
    """An image of (H, W) = size; the reply has `masks` [SEG] triggers and as many mask targets."""
    image = Image.fromarray(np.random.default_rng(index).integers(0, 256, (*size, 3), dtype=np.uint8))
    reply = "Sure." + " Mask: [SEG];" * masks
    targets = {"masks": [np.random.default_rng(index + k).random(size) > 0.5 for k in range(masks)]} if masks else {}
    return Sample(f"s{index}", [Turn("user", "<image>\nSegment the shape."), Turn("assistant", reply)],
                  {"image": [image]}, targets)


def test_head_trains_through_the_model(tmp_path: Path) -> None:
    """A batch with 0, 2 and 1 [SEG] per sample: the Processor runs the head's SAM view, the model reads the
    states before each [SEG], and `seg.bce` / `seg.dice` join the loss and train the projector and decoder."""
    from mmcore.assembly import assemble
    from mmcore.data import Processor
    from mmcore.testing import tiny_manifest

    (tmp_path / "m.toml").write_text(tiny_manifest('type = "mlp"', extra=HEAD))
    assembly = assemble(tmp_path / "m.toml", device="cpu")
    model = assembly.model
    processor = Processor.for_model(model, assembly.max_length, {"plain": assembly.template("plain")})
    batch = processor.batch([_sample(0, (20, 30), 0), _sample(1, (36, 24), 2), _sample(2, (28, 28), 1)], "plain",
                            train=True)
    head = model.heads["seg"]
    assert batch.media["image"].views["heads.seg"].shape == (3, 3, 64, 64)
    assert batch.media["image"].meta["heads.seg"][1] == {"original_size": (36, 24), "input_size": (64, 43)}
    out = model(batch)
    assert set(out.head_losses) == {"seg.bce", "seg.dice"}
    assert out.head_outputs["seg"]["sizes"].tolist() == [[36, 24], [36, 24], [28, 28]]
    assert out.lm_loss is not None and out.loss is not None
    assert torch.allclose(out.loss, out.lm_loss + out.head_losses["seg.bce"] + out.head_losses["seg.dice"])
    out.loss.backward()
    assert head.seg_projector[2].weight.grad is not None and head.mask_decoder.mask_tokens.weight.grad is not None
