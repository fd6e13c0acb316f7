"""Registries of components (entry points, one group per kind) and pluggy hooks."""

from mmcore.registry._discovery import Entry, discover_entries, discover_hook_modules, plugin_filter
from mmcore.registry._kinds import API_VERSION, GROUPS, KINDS, KNOWN_PROVIDERS
from mmcore.registry._manager import hookimpl, load_local_plugin, new_plugin_manager
from mmcore.registry._registry import Registry, Resolved

__all__ = [
    "API_VERSION",
    "GROUPS",
    "KINDS",
    "KNOWN_PROVIDERS",
    "Entry",
    "Registry",
    "Resolved",
    "discover_entries",
    "discover_hook_modules",
    "hookimpl",
    "load_local_plugin",
    "new_plugin_manager",
    "plugin_filter",
]
