"""sam-mask layout: presets and parameter counts, what trains, SAM and u-LLaVA checkpoints, config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from mmcore_plugin_sam.head import SamMaskHead

from mmcore.errors import ManifestError
from mmcore.kinds import BuildContext

TINY = ('preset = "vit_b"\nimage_size = 64\nencoder_width = 32\nencoder_depth = 1\nencoder_heads = 2\n'
        'global_attn_layers = [0]\nprompt_dim = 32\ndecoder_depth = 1\ndecoder_mlp_dim = 64\ndecoder_heads = 2\n')


def _meta_head(preset: str, width: int = 4096) -> SamMaskHead:
    config = SamMaskHead.Config.model_validate({"preset": preset})
    return SamMaskHead(config, BuildContext(name="seg", device=torch.device("meta"), llm_hidden_size=width))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", ["vit_b", "vit_l", "vit_h"])
def test_presets_are_segment_anythings_own_builds(preset: str) -> None:
    """Each preset has exactly the keys and shapes of segment_anything's `sam_model_registry[preset]()`."""
    from segment_anything.build_sam import sam_model_registry

    with torch.device("meta"):
        library = sam_model_registry[preset]()
    ours = {k: tuple(v.shape) for k, v in _meta_head(preset).state_dict().items() if not k.startswith("seg_projector.")}
    assert ours == {k: tuple(v.shape) for k, v in library.state_dict().items()}


def test_vit_h_counts_match_ullava() -> None:
    """SAM ViT-H at D = 4096 (next-systems.md §3.2, measured on u-LLaVA's build): image encoder 637,026,048,
    prompt encoder 6,220, mask decoder 4,058,340 (iou head 132,612), seg projector 17,830,144."""
    head = _meta_head("vit_h")
    assert _count(head.image_encoder) == 637_026_048
    assert _count(head.prompt_encoder) == 6_220
    assert _count(head.mask_decoder) == 4_058_340
    assert _count(head.mask_decoder.iou_prediction_head) == 132_612
    assert _count(head.seg_projector) == 17_830_144


def _manifest(tmp_path: Path, head: str, stages: str = "") -> Path:
    from mmcore.testing import tiny_manifest

    path = tmp_path / "m.toml"
    path.write_text(tiny_manifest('type = "mlp"', extra=f'\n[model.heads.seg]\ntype = "sam-mask"\n{head}\n{stages}'))
    return path


def test_trainable_as_ullava(tmp_path: Path) -> None:
    """Listing the head trains the seg projector and the mask decoder but not its iou_prediction_head; the
    image and prompt encoders stay frozen unless named (u-LLaVA train_ullava.py 247-261)."""
    from mmcore.assembly import assemble

    stages = ('[data.datasets.shapes]\ntype = "synthetic-shapes"\nsize = 4\n\n[[stages]]\nname = "s"\n'
              'trainable = ["heads.seg"]\n\n[[stages]]\nname = "e"\ntrainable = ["heads.seg.image_encoder"]\n')
    assembly = assemble(_manifest(tmp_path, TINY, stages))
    head = assembly.model.heads["seg"]
    expected = _count(head.seg_projector) + _count(head.mask_decoder) - _count(head.mask_decoder.iou_prediction_head)
    assert assembly.trainable["s"]["heads.seg"] == expected
    assert assembly.trainable["e"]["heads.seg"] == _count(head.image_encoder)


def test_sam_checkpoint_loads_weights_only(tmp_path: Path, kit: Any) -> None:
    """`weights` = a sam_vit_h_4b8939.pth-layout pickle (image_encoder/prompt_encoder/mask_decoder keys) loads
    through the weights_only path; the seg projector keeps its initialisation."""
    from mmcore.assembly import assemble

    source = kit.library_sam(kit.make_head())
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    torch.save(source.state_dict(), tmp_path / "sam.pth")
    plain = assemble(_manifest(tmp_path, TINY), device="cpu").model.heads["seg"]
    loaded = assemble(_manifest(tmp_path, TINY + 'weights = "sam.pth"\n'), device="cpu").model.heads["seg"]
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded.seg_projector[0].weight, plain.seg_projector[0].weight)


def test_ullava_checkpoint_keys_load(tmp_path: Path) -> None:
    """u-LLaVA's `visual_model.*` and `seg_projector.*` keys load; its llm / det keys are left to others."""
    from mmcore.assembly import assemble

    head = assemble(_manifest(tmp_path, TINY), device="cpu").model.heads["seg"]
    state = {("" if k.startswith("seg_projector.") else "visual_model.") + k: torch.randn_like(v)
             for k, v in head.state_dict().items()}
    state.update({"llm.model.embed_tokens.weight": torch.zeros(3, 4), "det_decoder.4.bias": torch.zeros(4)})
    torch.save(state, tmp_path / "ullava.bin")
    loaded = assemble(_manifest(tmp_path, TINY + 'weights = "ullava.bin"\n'), device="cpu").model.heads["seg"]
    for key, value in loaded.state_dict().items():
        wanted = state[key if key.startswith("seg_projector.") else f"visual_model.{key}"]
        assert torch.equal(value, wanted), key


def test_wrong_checkpoint_is_one_line(tmp_path: Path) -> None:
    """A SAM checkpoint of another size is a one-line error naming the clashing shapes."""
    from segment_anything.build_sam import sam_model_registry

    from mmcore.assembly import assemble

    with torch.device("meta"):
        keys = sam_model_registry["vit_b"]().state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in keys.items() if k.startswith("mask_decoder.")},
               tmp_path / "decoder.pth")
    with pytest.raises(ManifestError, match=r"decoder\.pth.*do not fit") as err:
        assemble(_manifest(tmp_path, TINY + 'weights = "decoder.pth"\n'), device="cpu")
    assert "\n" not in str(err.value)


def test_config_errors_are_manifest_lines(tmp_path: Path) -> None:
    """Impossible SAM shapes are one-line manifest errors naming the key's table."""
    from mmcore.assembly import assemble

    with pytest.raises(ManifestError, match=r"\[model\.heads\.seg\].*image_size 100 is not a multiple of patch_size"):
        assemble(_manifest(tmp_path, 'image_size = 100\n'))
    with pytest.raises(ManifestError, match=r"global_attn_layers \[5\] must lie in 0\.\.0"):
        assemble(_manifest(tmp_path, TINY.replace("[0]", "[5]")))
    with pytest.raises(ManifestError, match=r"preset.*'vit_b', 'vit_l' or 'vit_h'"):
        assemble(_manifest(tmp_path, 'preset = "vit_x"\n'))
