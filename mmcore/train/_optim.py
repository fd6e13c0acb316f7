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


def _schedule(kind: str, warmup: int, total: int, floor: float = 0.0, start: float = 0.0) -> Any:
    """A LambdaLR factor of the stage's lr. `floor` = min_lr / lr, `start` = warmup_lr / lr.

    cosine / linear / constant: transformers' get_*_schedule_with_warmup (warm-up from `start`), decaying to
    `floor` instead of 0 (floor 0, start 0: exactly transformers'). linear-warmup-cosine: LAVIS' (MiniGPT-4
    `minigpt4/common/optims.py`) LinearWarmupCosineLRScheduler — min(1, start + (1 − start)·t/W) while t < W,
    then floor + (1 − floor)·½(1 + cos(π·t/T)), t counted from the stage's first step (warm-up included)."""

    def factor(step: int) -> float:
        if kind == "linear-warmup-cosine":
            if step < warmup:
                return min(1.0, start + (1.0 - start) * step / max(warmup, 1))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * step / total))
        if step < warmup:
            return start + (1.0 - start) * step / max(1, warmup)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return floor + (1.0 - floor) * max(0.0, 1.0 - progress)
        return floor + (1.0 - floor) * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

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
    factor = _schedule(stage.schedule, warmup, total_steps, stage.min_lr / stage.lr, stage.warmup_lr / stage.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler
