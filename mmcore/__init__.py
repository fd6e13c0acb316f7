"""mmcore: build multimodal LLMs from pip-installable parts described in a TOML manifest.

The public surface is small and imported lazily, so `import mmcore` (and the CLI) stays free of torch:

    mmcore.load(RUN)           → a ready `Pipeline` (model + preprocessing + generation)
    mmcore.assemble(MANIFEST)  → an `Assembly` (model on the meta device, counts, checks)
    mmcore.hookimpl            → the marker for hook implementations in plugins
"""

from __future__ import annotations

from typing import Any

from mmcore.registry._kinds import API_VERSION
from mmcore.registry._manager import hookimpl

__all__ = ["API_VERSION", "MMCORE_API", "__version__", "assemble", "hookimpl", "load"]

MMCORE_API = API_VERSION  # the built-in plugins are built for the API of the core they ship in

_LAZY = {"load": "mmcore.pipeline", "assemble": "mmcore.assembly"}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("mmcore")
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmcore' has no attribute '{name}'")
