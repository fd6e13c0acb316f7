"""The pluggy plugin manager: hook modules from entry points and from local files."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pluggy

from mmcore.errors import PluginError
from mmcore.registry import hookspecs
from mmcore.registry._discovery import discover_hook_modules, plugin_filter

__all__ = ["hookimpl", "load_local_plugin", "new_plugin_manager"]

hookimpl = pluggy.HookimplMarker("mmcore")


def _trace(pm: pluggy.PluginManager) -> None:
    def before(name: str, impls: Any, kwargs: Any) -> None:
        owners = ", ".join(pm.get_name(i.plugin) or "?" for i in impls)
        print(f"[mmcore hook] {name}({', '.join(kwargs)}) -> [{owners}]", file=sys.stderr)

    def after(outcome: Any, name: str, impls: Any, kwargs: Any) -> None:
        print(f"[mmcore hook] {name} done", file=sys.stderr)

    pm.add_hookcall_monitoring(before, after)


def new_plugin_manager(load_entry_points: bool = True, strict: bool = False) -> pluggy.PluginManager:
    """A manager with mmcore's hookspecs and the installed `mmcore.plugins` modules.

    A hook module that fails to import is skipped with a warning on stderr (re-raised when
    `strict`). `MMCORE_TRACE_PLUGINS=1` prints every hook call.
    """
    pm = pluggy.PluginManager("mmcore")
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        for entry in discover_hook_modules():
            if plugin_filter(entry.distribution) is not None:
                continue
            try:
                pm.register(importlib.import_module(entry.module), name=f"{entry.distribution}:{entry.name}")
            except Exception as err:
                if strict:
                    raise PluginError(f"hook plugin '{entry.name}' from {entry.distribution} "
                                      f"failed to import: {err}") from err
                print(f"warning: hook plugin '{entry.name}' from {entry.distribution} "
                      f"is broken and was skipped: {err}", file=sys.stderr)
    pm.check_pending()
    if os.environ.get("MMCORE_TRACE_PLUGINS") == "1":
        _trace(pm)
    return pm


def load_local_plugin(pm: pluggy.PluginManager, path: Path, where: str) -> None:
    """Import a local plugin file (it runs, like a conftest.py) and register its hooks."""
    name = f"mmcore_local_{abs(hash(str(path.resolve())))}"
    if pm.get_plugin(name) is not None:
        return
    if not path.is_file():
        raise PluginError(f"{where}: local plugin file '{path}' does not exist; fix the path "
                          f"(relative paths are relative to the manifest)")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # Contract: a .py path always has a spec
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise PluginError(f"{where}: local plugin file '{path}' raised {type(err).__name__}: {err}") from err
    try:
        pm.register(module, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise PluginError(f"{where}: local plugin file '{path}': {str(err).splitlines()[0]}") from err
