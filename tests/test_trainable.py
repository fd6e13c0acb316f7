"""Which parameters train is decided by one rule, shared by the assembly report, the optimizer and the
checkpoint: components, groups, sub-module paths, a component's frozen sub-modules, LoRA, bias-norm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mmcore.assembly import assemble, stage_counts, trainable_names


def _stage(write_manifest: Any, tiny_model_text: str, body: str) -> tuple[Any, Any]:
    """The tiny model with one extra stage; returns (assembly on CPU, that stage)."""
    text = tiny_model_text + f'\n[[stages]]\nname = "probe"\n{body}\n'
    assembly = assemble(write_manifest(text), device="cpu")
    return assembly, assembly.loaded.manifest.stages[-1]


def test_report_optimizer_and_checkpoint_agree(write_manifest: Any, tiny_model_text: str) -> None:
    """The counts in the report equal the parameters the optimizer gets (requires_grad) for a mixed stage."""
    from mmcore.train._optim import set_trainable

    assembly, stage = _stage(write_manifest, tiny_model_text,
                             'trainable = ["projectors.vision.layers.2"]\nbias_norm = true\n'
                             '[stages.lora]\nr = 2\ntargets = ["q_proj"]')
    counts = stage_counts(assembly.model.components(), assembly.loaded.manifest, stage)
    names = set_trainable(assembly.model, assembly.loaded.manifest, stage)
    trained = {name: sum(p.numel() for p in module.parameters() if p.requires_grad)
               for name, module in assembly.model.components().items()}
    assert counts == trained
    assert names["projectors.vision"] == ["layers.2.weight", "layers.2.bias"]


def test_a_sub_module_path_trains_only_that_module(write_manifest: Any, tiny_model_text: str) -> None:
    """`heads.seg.decoder`-style entries: only the named sub-module of the component trains."""
    assembly, stage = _stage(write_manifest, tiny_model_text, 'trainable = ["projectors.vision.layers.0"]')
    names = trainable_names(assembly.model.components(), assembly.loaded.manifest, stage)
    assert names == {"projectors.vision": ["layers.0.weight", "layers.0.bias"]}


def test_frozen_sub_modules_stay_frozen_unless_named(write_manifest: Any, tiny_model_text: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A component's `frozen_modules` never train with the component; naming one explicitly trains it."""
    from mmcore_plugin_mlp.projectors import MlpProjector

    monkeypatch.setattr(MlpProjector, "frozen_modules", ("layers.0",))
    assembly, stage = _stage(write_manifest, tiny_model_text, 'trainable = ["projectors"]')
    names = trainable_names(assembly.model.components(), assembly.loaded.manifest, stage)
    assert names == {"projectors.vision": ["layers.2.weight", "layers.2.bias"]}
    both = 'trainable = ["projectors", "projectors.vision.layers.0"]'
    assembly, stage = _stage(write_manifest, tiny_model_text, both)
    names = trainable_names(assembly.model.components(), assembly.loaded.manifest, stage)
    assert len(names["projectors.vision"]) == 4


def test_meta_report_leaves_the_model_without_lora(tiny_manifest: Path) -> None:
    """Counting a LoRA stage for the report adapts a copy of the LLM; the assembled model stays plain."""
    text = tiny_manifest.read_text() + '\n[[stages]]\nname = "l"\n[stages.lora]\nr = 2\n'
    tiny_manifest.write_text(text)
    assembly = assemble(tiny_manifest)
    assert assembly.trainable["l"]["llm"] > 0
    assert not any("lora" in n for n, _ in assembly.model.llm.named_parameters())
