"""Counting parameters: per component, and trainable per stage (LoRA counted analytically)."""

from __future__ import annotations

from torch import nn

from mmcore.errors import MmcoreError
from mmcore.manifest import Manifest, StageSpec, qualify

__all__ = ["count", "lora_parameters", "stage_trainable"]


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def lora_parameters(llm: nn.Module, targets: list[str], rank: int) -> int:
    """peft LoRA adds A (r × in) and B (out × r) to every targeted nn.Linear: r · (in + out)."""
    wanted = set(targets)
    total = 0
    for name, module in llm.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in wanted and not name.endswith("lm_head"):
            total += rank * (module.in_features + module.out_features)
    return total


def _bias_norm(llm: nn.Module) -> int:
    return sum(p.numel() for n, p in llm.named_parameters() if "bias" in n or "norm" in n)


def stage_trainable(manifest: Manifest, modules: dict[str, nn.Module], stage: StageSpec,
                    lora_targets: list[str]) -> dict[str, int]:
    """Trainable parameters of each component in `stage` (qualified name → count)."""
    chosen = {q for entry in stage.trainable for q in qualify(manifest, entry)}
    if stage.lora is not None and "llm" in chosen:
        raise MmcoreError(f"stage '{stage.name}': lists the llm in trainable and has a [stages.lora] table; "
                            f"with LoRA the LLM's base weights stay frozen — remove 'llm' from trainable")
    result = {name: count(modules[name]) if name in chosen else 0 for name in modules}
    llm = modules["llm"]
    if stage.lora is not None:
        targets = lora_targets if stage.lora.targets == "all-linear" else list(stage.lora.targets)
        unknown = sorted(set(targets) - set(lora_targets))
        if unknown:
            raise MmcoreError(f"stage '{stage.name}': lora targets {unknown} are not linear layers of the "
                                f"LLM; valid: {lora_targets}")
        result["llm"] += lora_parameters(llm, targets, stage.lora.r)
    if stage.bias_norm and "llm" not in chosen:
        result["llm"] += _bias_norm(llm)
    if not any(result.values()):
        raise MmcoreError(f"stage '{stage.name}': trains nothing; list components in trainable "
                            f"(e.g. trainable = [\"projectors\"]) or add [stages.lora]")
    return result
