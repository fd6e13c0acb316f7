"""Which parameters train in a stage — one rule, used by the assembly report, the optimizer and the
checkpoint — and parameter counts.

A `trainable` entry names a component (`llm`, `projectors.vision`), a group (`projectors`), a short
name (`vision` when unambiguous) or a sub-module inside a component (`heads.seg.decoder`). A component's
`frozen_modules` never train unless an entry names them (or something inside them) explicitly. LoRA adds
the LLM's `lora_` parameters (the adapters must already be in the model), `bias_norm` its biases and norms.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mmcore.errors import MmcoreError, choices_text, did_you_mean
from mmcore.manifest import Manifest, StageSpec, qualify

__all__ = ["apply_stage_lora", "count", "resolve_entry", "stage_counts", "trainable_names"]


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def resolve_entry(manifest: Manifest, modules: dict[str, nn.Module], entry: str) -> list[tuple[str, str]]:
    """A `trainable` entry → [(component, sub-module path or "")]; a one-line error when nothing matches."""
    named = qualify(manifest, entry)
    if named:
        return [(name, "") for name in named]
    owner = next((q for q in sorted(modules, key=len, reverse=True) if entry.startswith(f"{q}.")), None)
    if owner is None:
        raise MmcoreError(f"trainable: no component '{entry}'{did_you_mean(entry, modules)}; components: "
                          f"{choices_text(modules)}")
    path = entry[len(owner) + 1 :]
    submodules = [n for n, _ in modules[owner].named_modules() if n]
    if path not in submodules:
        raise MmcoreError(f"trainable: '{owner}' has no sub-module '{path}'{did_you_mean(path, submodules)}")
    return [(owner, path)]


def _inside(name: str, path: str) -> bool:
    return not path or name == path or name.startswith(f"{path}.")


def trainable_names(modules: dict[str, nn.Module], manifest: Manifest, stage: StageSpec) -> dict[str, list[str]]:
    """Qualified component (`model.components()`) → the names of its parameters that train in `stage`
    (components with none left out)."""
    chosen: dict[str, list[str]] = {}
    for entry in stage.trainable:
        for owner, path in resolve_entry(manifest, modules, entry):
            chosen.setdefault(owner, []).append(path)
    if stage.lora is not None and "" in chosen.get("llm", []):
        raise MmcoreError(f"stage '{stage.name}': lists the llm in trainable and has a [stages.lora] table; with "
                          f"LoRA the LLM's base weights stay frozen — remove 'llm' from trainable")
    result: dict[str, list[str]] = {}
    for name, module in modules.items():
        paths = chosen.get(name, [])
        frozen = [f for f in getattr(module, "frozen_modules", ()) if not any(p and _inside(p, f) for p in paths)]
        names = []
        for pname, _ in module.named_parameters():
            on = any(_inside(pname, p) for p in paths) and not any(_inside(pname, f) for f in frozen)
            on |= name == "llm" and stage.lora is not None and "lora_" in pname
            on |= name == "llm" and stage.bias_norm and ("bias" in pname or "norm" in pname)
            if on:
                names.append(pname)
        if names:
            result[name] = names
    if not result:
        raise MmcoreError(f"stage '{stage.name}': trains nothing; list components in trainable "
                          f"(e.g. trainable = [\"projectors\"]) or add [stages.lora]")
    return result


def _lora_targets(llm: Any, stage: StageSpec) -> list[str]:
    assert stage.lora is not None  # Contract: only called for LoRA stages
    valid = llm.lora_target_names()
    targets = valid if stage.lora.targets == "all-linear" else list(stage.lora.targets)
    unknown = sorted(set(targets) - set(valid))
    if unknown:
        raise MmcoreError(f"stage '{stage.name}': lora targets {unknown} are not linear layers of the LLM; "
                          f"valid: {valid}")
    return targets


def apply_stage_lora(llm: Any, stage: StageSpec) -> None:
    """Put the stage's LoRA adapters into the LLM (idempotent)."""
    if stage.lora is not None:
        lora = stage.lora
        llm.apply_lora(lora.r, lora.alpha, lora.dropout, _lora_targets(llm, stage))


def stage_counts(modules: dict[str, nn.Module], manifest: Manifest, stage: StageSpec) -> dict[str, int]:
    """Trainable parameters per component in `stage` (the report). A LoRA stage is counted on a copy of the
    LLM (on the meta device: no memory) with the adapters in place; the model itself is left as it is."""
    if stage.lora is not None:
        llm = copy.deepcopy(modules["llm"])
        with torch.device("meta") if next(llm.parameters()).is_meta else torch.device("cpu"):
            apply_stage_lora(llm, stage)
        modules = {**modules, "llm": llm}
    names = {name: set(found) for name, found in trainable_names(modules, manifest, stage).items()}
    return {name: sum(p.numel() for n, p in module.named_parameters() if n in names.get(name, set()))
            for name, module in modules.items()}
