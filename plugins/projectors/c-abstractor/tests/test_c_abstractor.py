"""C-Abstractor: Honeybee's layout and key names, shapes, manifest errors, checkpoint upgrades."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmcore_plugin_c_abstractor.abstractor import CAbstractor, CAbstractorConfig

from mmcore.errors import ManifestError
from mmcore.kinds import BuildContext, Features, FeatureSpec


def _build(grid: int = 4, dim: int = 8, llm: int = 12, **options: object) -> CAbstractor:
    ctx = BuildContext(name="vision", upstream=FeatureSpec(dim=dim, num_tokens=grid * grid, grid=(grid, grid)),
                       llm_hidden_size=llm)
    return CAbstractor(CAbstractorConfig.model_validate({"hidden_size": 16, **options}), ctx)


def test_honeybee_module_layout_and_keys() -> None:
    """RegStage (b1..bN, depthwise 3×3 conv2, SE, LayerNorm2d, SiLU) → pool → RegStage → SiLU readout;
    keys as in Honeybee's `abstractor.*`."""
    from timm.layers import LayerNormAct2d

    model = _build(num_queries=4, depth=3, mlp_depth=2)
    keys = set(model.state_dict())
    for key in ("pos_emb", "net.0.b1.conv1.conv.weight", "net.0.b1.conv1.bn.weight", "net.0.b3.se.fc1.weight",
                "net.0.b1.downsample.conv.weight", "net.2.b1.conv2.conv.weight", "readout.0.weight",
                "readout.2.bias"):
        assert key in keys, key
    assert "net.2.b1.downsample.conv.weight" not in keys  # same width in the second stage: identity shortcut
    assert isinstance(model.net[1], torch.nn.AdaptiveAvgPool2d) and model.net[1].output_size == (2, 2)
    assert model.net[0].b1.conv2.conv.groups == 16  # group size 1: depthwise 3×3
    assert isinstance(model.net[0].b1.conv1.bn, LayerNormAct2d)  # timm's LayerNorm2d + act, named `bn`
    assert isinstance(model.net[0].b1.conv1.bn.act, torch.nn.SiLU) and isinstance(model.readout[1], torch.nn.SiLU)


def test_shapes_and_upsampling() -> None:
    """M tokens out (plus eos tokens); M may exceed the input token count; depth 0 is the pool alone."""
    features = Features(tokens=torch.randn(2, 16, 8), grid=(4, 4))
    assert _build(num_queries=4)(features).shape == (2, 4, 12)
    assert _build(num_queries=36)(features).shape == (2, 36, 12)
    with_eos = _build(num_queries=4, num_eos_tokens=1)
    assert with_eos(features).shape == (2, 5, 12) and with_eos.num_tokens == 5
    pool_only = _build(num_queries=4, depth=0, mlp_depth=1)
    assert pool_only.readout[0].in_features == 8 and pool_only(features).shape == (2, 4, 12)


def test_old_checkpoint_pos_emb_with_cls_slot_loads(tmp_path: Path) -> None:
    """A Honeybee checkpoint's `abstractor.*` keys load; an old pos_emb with the CLS slot loses it."""
    from mmcore.checkpoint import load_into

    source = _build(num_queries=4)
    state = {f"abstractor.{k}": v.clone() for k, v in source.state_dict().items()}
    state["abstractor.pos_emb"] = torch.cat([torch.full((1, 1, 8), 9.0), state["abstractor.pos_emb"]], dim=1)
    state["language_model.model.norm.weight"] = torch.ones(3)  # the rest of a Honeybee checkpoint is ignored
    target = _build(num_queries=4)
    load_into(target, target.adapt_state_dict(state), "honeybee")
    assert torch.equal(target.pos_emb, source.pos_emb)
    assert torch.equal(target.readout[2].weight, source.readout[2].weight)


def _manifest(queries: int, select: str) -> str:
    from mmcore.testing import tiny_manifest

    return tiny_manifest(f'type = "c-abstractor"\nhidden_size = 16\nnum_queries = {queries}',
                         encoder=f'select_feature = "{select}"')


def test_manifest_errors(tmp_path: Path) -> None:
    """A non-square num_queries and an encoder without a grid are one-line manifest errors."""
    from mmcore.assembly import assemble

    def manifest(queries: int, select: str) -> Path:
        path = tmp_path / f"m{queries}{select}.toml"
        path.write_text(_manifest(queries, select))
        return path

    assert assemble(manifest(4, "patch")).tokens_per_item == {"image": 4}
    with pytest.raises(ManifestError, match=r"10 is not a perfect square.*use 9 or 16"):
        assemble(manifest(10, "patch"))
    with pytest.raises(ManifestError, match="needs grid-shaped features, but encoder 'vision' reports no grid"):
        assemble(manifest(4, "cls_patch"))


TRAIN = """
[data]
num_workers = 0

[data.datasets.shapes]
type = "synthetic-shapes"
size = 16
image_size = 28
tasks = ["vqa/colour", "vqa/shape", "vqa/count"]
pack_turns = 3
dedup = "answer"

[[stages]]
name = "instruct"
trainable = ["projectors", "llm"]
template = "honeybee"
batch_size = 4
max_steps = 4
lr = 1e-3
log_every = 1
"""


def test_tiny_c_abstractor_trains_on_packed_honeybee_data(tmp_path: Path) -> None:
    """A tiny C-Abstractor model trains on multi-turn packed synthetic-shapes with the honeybee template."""
    import json

    from mmcore.assembly import assemble
    from mmcore.run import Run
    from mmcore.train import train

    (tmp_path / "m.toml").write_text(_manifest(4, "patch") + TRAIN)
    Run.create(tmp_path / "run", assemble(tmp_path / "m.toml"))
    before = {k: v.clone() for k, v in assemble(tmp_path / "m.toml", device="cpu").model.projectors["vision"]
              .state_dict().items()}
    trainer = train(tmp_path / "run")
    after = trainer.model.projectors["vision"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert len(steps) == 4 and all(s["loss"] == s["loss"] for s in steps)  # finite, no NaN
