"""Training checkpoints: trained weights (safetensors), optimizer + scheduler, RNG and data position.

A checkpoint is written into a temporary folder and renamed into place, then `latest` is replaced
atomically, so a kill at any moment leaves the last good checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmcore.errors import MmcoreError

__all__ = ["TrainState", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]


@dataclass
class TrainState:
    """Where training stands: the next step of `stage_index` and what has been trained so far."""

    stage_index: int = 0
    stage: str = ""  # the name of the stage at `stage_index` while it runs
    step: int = 0  # the next optimizer step to run in this stage
    steps: int = 0  # optimizer steps in this stage
    # stage name → {"steps", "max_steps", "epochs"} of every finished stage, in the order they ran
    completed: dict[str, dict[str, Any]] = field(default_factory=dict)
    trained: dict[str, list[str]] = field(default_factory=dict)  # component → parameter names ever trained
    lora: dict[str, Any] | None = None  # the LoRA applied to the LLM, re-applied on resume
    skipped: dict[str, int] = field(default_factory=dict)


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(root: Path, state: TrainState, modules: dict[str, torch.nn.Module],
                    optimizer: Any = None, scheduler: Any = None, keep: int = 1) -> Path:
    """Write the trained parameters, optimizer/scheduler, RNG and `state`; return the folder."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"ckpt-{state.stage_index}-{state.step:07d}"
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "weights").mkdir(parents=True)
    for name, names in state.trained.items():
        wanted = set(names)
        params = {k: v.detach().contiguous().cpu() for k, v in modules[name].state_dict().items() if k in wanted}
        save_file(params, str(tmp / "weights" / f"{name}.safetensors"))
    if optimizer is not None:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _replace_text(root / "latest", final.name)
    for old in sorted(root.glob("ckpt-*"), key=lambda p: p.stat().st_mtime)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    folder = root / pointer.read_text().strip()
    if not (folder / "state.json").exists():
        raise MmcoreError(f"{pointer} names {folder}, which is incomplete; delete {pointer} to start over")
    return folder


def read_state(folder: Path) -> TrainState:
    try:
        return TrainState(**json.loads((folder / "state.json").read_text()))
    except (ValueError, TypeError) as err:
        raise MmcoreError(f"{folder}/state.json is corrupt ({err}); delete {folder.parent}/latest to restart") from None


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer: Any = None,
                    scheduler: Any = None) -> None:
    """Load trained weights (and optimizer, scheduler, RNG when given) from `folder`."""
    from safetensors.torch import load_file

    for file in sorted((folder / "weights").glob("*.safetensors")):
        module = modules.get(file.stem)
        if module is None:
            raise MmcoreError(f"checkpoint {file}: no component '{file.stem}' in this manifest; was the run "
                              f"re-assembled with another model? Train it in a new run directory")
        state = load_file(str(file))
        own = module.state_dict()
        clash = next((f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                      if k in own and tuple(v.shape) != tuple(own[k].shape)), None)
        if clash:
            raise MmcoreError(f"checkpoint {file}: component '{file.stem}' no longer fits it ({clash}, checkpoint vs "
                              f"manifest); the model changed since it was trained — train it in a new run directory")
        unexpected = module.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise MmcoreError(f"checkpoint {file}: keys {unexpected[:3]} do not belong to '{file.stem}'")
    if optimizer is not None and (folder / "optimizer.pt").exists():
        saved = torch.load(folder / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(torch.load(folder / "rng.pt", weights_only=True)["torch"])
