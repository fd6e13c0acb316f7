"""Finding installed components from entry-point metadata, without importing any plugin code.

Each kind has one entry-point group (`mmcore.encoders`, ...); the entry-point name is the `type`
used in manifests and the value is `module:Class`. Discovery reads distribution metadata only, so
`mmcore plugins` and `mmcore --help` never import torch or a plugin module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

from mmcore.registry._kinds import GROUPS, HOOKS_GROUP

__all__ = ["Entry", "discover_entries", "discover_hook_modules", "plugin_filter"]


@dataclass(frozen=True)
class Entry:
    """One component as the metadata declares it: `kind`/`name` → `value` from `distribution`."""

    kind: str
    name: str
    value: str  # "module:Class"
    distribution: str
    version: str

    @property
    def module(self) -> str:
        return self.value.split(":", 1)[0]

    @property
    def attribute(self) -> str:
        return self.value.split(":", 1)[1] if ":" in self.value else ""


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def plugin_filter(distribution: str) -> str | None:
    """Why `distribution` is switched off by the allow/deny variables, or None when it is on.

    `MMCORE_LOAD_PLUGINS=a,b` loads only those distributions (empty: none but the core's own);
    `MMCORE_BLOCK_PLUGINS=x,y` never loads those. The core's built-ins are always on.
    """
    if distribution == "mmcore":
        return None
    allowed = _env_names("MMCORE_LOAD_PLUGINS")
    if allowed is not None and distribution not in allowed:
        return "not in MMCORE_LOAD_PLUGINS"
    blocked = _env_names("MMCORE_BLOCK_PLUGINS") or set()
    if distribution in blocked:
        return "blocked by MMCORE_BLOCK_PLUGINS"
    return None


def _distributions() -> list[metadata.Distribution]:
    """Installed distributions, one per name (the first on sys.path wins, as import does)."""
    seen: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in seen:
            seen[name] = dist
    return list(seen.values())


def discover_entries() -> list[Entry]:
    """Every component entry point of every installed distribution, blocked ones included."""
    group_kind = {group: kind for kind, group in GROUPS.items()}
    entries: list[Entry] = []
    for dist in _distributions():
        for ep in dist.entry_points:
            kind = group_kind.get(ep.group)
            if kind is not None:
                entries.append(Entry(kind, ep.name, ep.value, dist.metadata["Name"], dist.version))
    return sorted(entries, key=lambda e: (e.kind, e.name, e.distribution))


def discover_hook_modules() -> list[Entry]:
    """Entry points of the `mmcore.plugins` group: modules holding pluggy hook implementations."""
    found = []
    for dist in _distributions():
        for ep in dist.entry_points:
            if ep.group == HOOKS_GROUP:
                found.append(Entry("hooks", ep.name, ep.value, dist.metadata["Name"], dist.version))
    return found
