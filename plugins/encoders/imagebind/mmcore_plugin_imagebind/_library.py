"""Meta's ImageBind model code from `imagebind-unofficial`, imported without its package `__init__`.

`imagebind/__init__.py` imports `imagebind.data`, which needs torchaudio and pytorchvideo (environment.md §5);
the model modules need neither. The package is registered as an empty namespace pointing at its folder, so
`imagebind.models.imagebind_model` imports alone.

ImageBind's `SimpleTransformer` computes drop-path rates with `torch.linspace(...)[i].item()`, which fails
on the meta device (next-systems.md §2.1). Only that module's `torch` is replaced by a proxy whose
`linspace` runs on the CPU; torch itself and every other module are untouched.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch

from mmcore.errors import MmcoreError

__all__ = ["imagebind_model"]


class _CpuLinspaceTorch(types.ModuleType):
    """`torch` for imagebind's transformer module: every attribute is torch's, `linspace` runs on CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def linspace(*args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.linspace(*args, **{**kwargs, "device": "cpu"})


def _register_without_init(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MmcoreError("the imagebind encoder needs Meta's model code: pip install --no-deps "
                          "imagebind-unofficial==0.1.1 (with --no-deps: its declared torchaudio breaks transformers)")
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = str(Path(package.__path__[0]) / "__init__.py")
    sys.modules[name] = package


def imagebind_model() -> Any:
    """`imagebind.models.imagebind_model`, importable on any device."""
    _register_without_init("imagebind")
    from imagebind.models import imagebind_model as module
    from imagebind.models import transformer

    if not isinstance(transformer.torch, _CpuLinspaceTorch):
        transformer.torch = _CpuLinspaceTorch()  # type: ignore[attr-defined]
    return module
