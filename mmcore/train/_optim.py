"""What trains in a stage, its optimizer (AdamW, per-component learning rates) and schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from mmcore.manifest import Manifest, StageSpec, qualify

__all__ = ["build_optimizer", "set_trainable"]


def set_trainable(model: Any, manifest: Manifest, stage: StageSpec) -> dict[str, list[str]]:
    """Add the stage's LoRA, freeze everything, then unfreeze what `trainable_names` (the one rule the
    assembly report and the checkpoint use too) says trains. Returns those names per component."""
    from mmcore.assembly import apply_stage_lora, trainable_names

    apply_stage_lora(model.llm, stage)
    modules = model.components()
    names = trainable_names(modules, manifest, stage)
    model.requires_grad_(False)
    for name, found in names.items():
        wanted = set(found)
        for pname, param in modules[name].named_parameters():
            param.requires_grad_(pname in wanted)
    return names


def _undecayed_gate(module: Any, name: str) -> bool:
    """An adapter projector's zero-init gates get no weight decay unless it asks for upstream's (ImageBind-LLM
    decays them: `gate_weight_decay = true`)."""
    from mmcore.kinds import AdapterProjector

    return isinstance(module, AdapterProjector) and name == "gates" and not module.gate_weight_decay


def _schedule(kind: str, warmup: int, total: int) -> Any:
    """transformers' get_{cosine,linear,constant}_schedule_with_warmup as a LambdaLR factor."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def build_optimizer(model: Any, manifest: Manifest, stage: StageSpec,
                    total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with one group per (component, decay): LLaVA's projector-lr groups, generalised; biases and
    norms (1-D parameters) get no weight decay, as in transformers' Trainer, nor adapter gates (see
    `_undecayed_gate`)."""
    rates = {q: lr for entry, lr in stage.lr_per_component.items() for q in qualify(manifest, entry)}
    groups = []
    for name, module in model.components().items():
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        lr = rates.get(name, stage.lr)
        decayed = {n for n, p in params if p.ndim > 1 and not _undecayed_gate(module, n)}
        decay = [p for n, p in params if n in decayed]
        no_decay = [p for n, p in params if n not in decayed]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": stage.weight_decay, "name": f"{name}"})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"})
    optimizer = torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.999), eps=1e-8)
    warmup = math.ceil(stage.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(stage.schedule, warmup, total_steps))
    return optimizer, scheduler
