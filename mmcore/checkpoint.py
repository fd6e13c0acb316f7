"""Per-component safetensors files, written atomically (a crash leaves the previous file whole)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcore.errors import MmcoreError

__all__ = ["load_component_weights", "load_into", "read_pickle", "read_state_file", "save_component_weights"]


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


def _refusal(err: BaseException) -> str:
    """The reason in torch's weights_only refusal, as one plain sentence (no ANSI codes, no advice to unpickle)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text, re.S)
    reason = match.group(1) if match else (text.strip().splitlines() or [type(err).__name__])[0]
    return " ".join(reason.split()).rstrip(".")


def read_pickle(path: Path) -> Any:
    """What a torch pickle holds, read with `weights_only=True` only (tensors, containers, numbers, strings); one
    line naming the file when torch refuses it or it cannot be read."""
    return _read(path, safetensors=False)


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch pickle read with `weights_only=True` only
    (LLaVA's `mm_projector.bin`, `non_lora_trainables.bin`, `adapter_model.bin`)."""
    state = _read(path, safetensors=path.suffix == ".safetensors")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MmcoreError(f"weights {path}: not a state dict (name → tensor); save one with "
                          f"torch.save(module.state_dict())")
    return state


def _read(path: Path, safetensors: bool) -> Any:
    import pickle
    import warnings

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if safetensors:
            return load_file(str(path))
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the verdict is ours
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise MmcoreError(f"weights {path}: refused by torch.load(weights_only=True): it holds more than tensors "
                          f"({_refusal(err)}); mmcore never unpickles arbitrary objects — convert it to safetensors "
                          f"where you trust it") from None
    except (SafetensorError, OSError, EOFError, ValueError, RuntimeError) as err:
        first = " ".join((str(err).strip().splitlines() or [type(err).__name__])[0].split())
        raise MmcoreError(f"weights {path}: cannot be read ({first}); re-download or re-save it") from None


def load_into(module: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load with a one-line error naming the first missing / unexpected keys and shape clashes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    clashes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or clashes:
        raise MmcoreError(f"weights {origin}: do not fit '{type(module).__name__}' (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}, shape {clashes[:2]}); check the file is for this "
                          f"component and configuration")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_component_weights(modules: dict[str, nn.Module], folder: Path) -> list[str]:
    """Load every `folder/<name>.safetensors` that exists into its module; return the names loaded."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    loaded = []
    for name, module in modules.items():
        path = folder / f"{name}.safetensors"
        if not path.exists():
            continue
        try:
            state = load_file(str(path))
            with safe_open(str(path), "pt") as handle:
                subset = bool((handle.metadata() or {}).get("subset"))  # e.g. LoRA adapters only (import llava)
        except (SafetensorError, OSError) as err:
            raise MmcoreError(f"checkpoint {path}: cannot be read ({err}); restore it or delete it") from None
        missing, unexpected = module.load_state_dict(state, strict=False)
        if subset:
            missing = []
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise MmcoreError(f"checkpoint {path}: keys do not match component '{name}' "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it written for "
                              f"another manifest?")
        loaded.append(name)
    return loaded
