"""Finding the line of a key in TOML text, so errors can say `file:line` (tomllib keeps none)."""

from __future__ import annotations

import re

__all__ = ["key_lines", "line_of"]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\.\"' ]+?)\s*=")

Path = tuple[str | int, ...]


def _split_key(raw: str) -> list[str]:
    return [part.strip().strip("\"'") for part in raw.split(".")]


def _in_arrays(parts: Path, array_counts: dict[Path, int]) -> Path:
    """A header inside an array of tables ([stages.lora] after [[stages]]) names the array's last entry:
    ("stages", "lora") → ("stages", 1, "lora")."""
    out: list[str | int] = []
    for position, part in enumerate(parts):
        out.append(part)
        if position < len(parts) - 1 and tuple(out) in array_counts:
            out.append(array_counts[tuple(out)])
    return tuple(out)


def key_lines(text: str) -> dict[Path, int]:
    """Map each table and key path (array tables indexed) to its 1-based line number."""
    lines: dict[Path, int] = {}
    table: Path = ()
    array_counts: dict[Path, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            parts = _in_arrays(tuple(_split_key(header.group(2))), array_counts)
            if header.group(1) == "[[":
                index = array_counts.get(parts, -1) + 1
                array_counts[parts] = index
                table = (*parts, index)
            else:
                table = parts
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key and not line.lstrip().startswith("#"):
            lines.setdefault((*table, *_split_key(key.group(1))), number)
    return lines


def line_of(text: str, loc: Path) -> int | None:
    """The line of `loc`, or of its nearest enclosing table, or None."""
    lines = key_lines(text)
    path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
