"""Importing one component class and checking that it keeps the core's contract."""

from __future__ import annotations

import functools
import importlib
import sys

from mmcore.errors import PluginError
from mmcore.registry._kinds import API_VERSION

__all__ = ["check_api", "import_component"]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@functools.lru_cache(maxsize=1)
def _distributions_of() -> dict[str, list[str]]:
    from importlib import metadata

    return dict(metadata.packages_distributions())


def _unmet(module_name: str) -> str:
    """'mmcore-plugin-x needs timm>=0.9.8 (not installed): pip install "timm>=0.9.8"', or '' — the declared
    requirements of the distribution providing `module_name` that are missing or of the wrong version."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ""
    for dist in _distributions_of().get(module_name.split(".")[0], []):
        unmet = []
        try:
            declared = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:  # uninstalled since the mapping was cached
            continue
        for text in declared:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                found = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                unmet.append((str(req), "not installed"))
                continue
            if req.specifier and not req.specifier.contains(found, prereleases=True):
                unmet.append((str(req), f"found {found}"))
        if unmet:
            needs = ", ".join(f"{r} ({why})" for r, why in unmet)
            return f"{dist} needs {needs}: pip install " + " ".join(f'"{r}"' for r, _ in unmet)
    return ""


def check_api(module_name: str, where: str) -> None:
    """Raise unless the plugin's top-level package declares `MMCORE_API` equal to ours."""
    top = sys.modules.get(module_name.split(".")[0])
    declared = getattr(top, "MMCORE_API", None)
    if declared is None:
        raise PluginError(
            f"{where}: package '{module_name.split('.')[0]}' does not declare the core API it targets; "
            f"add `MMCORE_API = {API_VERSION}` to its __init__.py"
        )
    if declared != API_VERSION:
        raise PluginError(
            f"{where}: built for mmcore API {declared}, but this mmcore provides API {API_VERSION}; "
            f"install a release of the plugin made for API {API_VERSION}, or an mmcore that provides "
            f"API {declared}"
        )


def import_component(kind: str, value: str, where: str | None = None) -> type:
    """Import `module:Class`, check it is a `kind` component built for our API, return the class."""
    from mmcore.kinds import BASE_CLASSES  # imports torch: only reached when a component is used

    where = where or value
    module_name, _, attr = value.partition(":")
    unmet = _unmet(module_name)  # a dependency imported lazily would otherwise fail only when it is built
    if unmet:
        raise PluginError(f"{where}: {unmet}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise PluginError(f"{where}: importing '{module_name}' failed: {_one_line(err)}") from err
    check_api(module_name, where)
    cls = getattr(module, attr, None) if attr else None
    if not isinstance(cls, type):
        raise PluginError(f"{where}: '{module_name}' has no class '{attr}'; fix the entry point value")
    base = BASE_CLASSES[kind]
    if not issubclass(cls, base):
        raise PluginError(f"{where}: {cls.__name__} is registered as a {kind} but is not a {base.__name__}")
    return cls
