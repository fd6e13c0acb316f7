"""EVA reports its patch grid, so Honeybee's grid projectors (C- / D-Abstractor) take it like CLIP."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

PROJECTORS = {"c-abstractor": ("mmcore_plugin_c_abstractor", "num_queries = 4\nhidden_size = 16\ndepth = 1"),
              "d-abstractor": ("mmcore_plugin_d_abstractor", "num_queries = 4\nhidden_size = 16\ndecoder_layers = 1\n"
                                                             "decoder_attention_heads = 2\ndecoder_ffn_dim = 32")}

ENCODER = """config = { img_size = 56, embed_dim = 32, depth = 1, num_heads = 4 }
ln_vision = true
precision = "bf16"
"""


@pytest.mark.parametrize("projector", sorted(PROJECTORS))
def test_tiny_eva_feeds_a_grid_projector(projector: str, tmp_path: Path, eva_manifest: Callable[..., Path]) -> None:
    """A tiny EVA (4 × 4 grid, bf16 tower) feeds the abstractor in a real batch; the loss back-propagates."""
    package, options = PROJECTORS[projector]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    from PIL import Image

    from mmcore.assembly import assemble
    from mmcore.kinds import Sample, Turn
    from mmcore.pipeline import load
    from mmcore.run import Run

    Run.create(tmp_path / "run", assemble(eva_manifest(ENCODER, f'type = "{projector}"\n{options}')))
    pipeline = load(tmp_path / "run")
    assert pipeline.model.encoders["vision"].output_spec.grid == (4, 4)
    samples = [Sample(id=str(i), conversation=[Turn("user", "<image>\nwhat?"), Turn("assistant", "a square")],
                      media={"image": [Image.new("RGB", (40 + 9 * i, 30), (40 * i, 90, 200))]}) for i in range(2)]
    batch = pipeline.processor.batch(samples, "plain", train=True)
    pipeline.model.train()
    out = pipeline.model(batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in pipeline.model.projectors["vision"].parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
