"""Writing manifest values (imports and test fixtures generate manifests)."""

from __future__ import annotations

import json

__all__ = ["toml_value"]


def toml_value(value: object) -> str:
    """A TOML literal for the simple values generated manifests contain."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
