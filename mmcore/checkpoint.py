"""Per-component safetensors files, written atomically (a crash leaves the previous file whole)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mmcore.errors import MmcoreError

__all__ = ["load_component_weights", "save_component_weights"]


def save_component_weights(modules: dict[str, nn.Module], folder: Path) -> list[Path]:
    """Write `folder/<name>.safetensors` for each module: tmp file, fsync, rename."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, module in modules.items():
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        final = folder / f"{name}.safetensors"
        tmp = folder / f".{name}.safetensors.tmp{os.getpid()}"
        save_file(_untie(state), str(tmp), metadata={"format": "pt", "component": name})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        written.append(final)
    return written


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): give each tensor its own copy."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def load_component_weights(modules: dict[str, nn.Module], folder: Path) -> list[str]:
    """Load every `folder/<name>.safetensors` that exists into its module; return the names loaded."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    loaded = []
    for name, module in modules.items():
        path = folder / f"{name}.safetensors"
        if not path.exists():
            continue
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise MmcoreError(f"checkpoint {path}: cannot be read ({err}); restore it or delete it") from None
        missing, unexpected = module.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise MmcoreError(f"checkpoint {path}: keys do not match component '{name}' "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it written for "
                              f"another manifest?")
        loaded.append(name)
    return loaded
