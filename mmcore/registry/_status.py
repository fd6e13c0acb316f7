"""Whether each installed plugin imports: checked in a child process, remembered in a cache.

`mmcore plugins` must not import torch or plugin code itself, yet it must say which plugins are
broken. It asks a child interpreter (`python -m mmcore.registry._probe`) to import the entries whose
files changed since the last check, and caches the verdicts under `$MMCORE_CACHE_DIR`
(default `~/.cache/mmcore`). Resolving a component in-process records its verdict too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from mmcore.registry._discovery import Entry

__all__ = ["cache_dir", "check_entries", "record"]

OK = "OK"


def cache_dir() -> Path:
    return Path(os.environ.get("MMCORE_CACHE_DIR") or Path.home() / ".cache" / "mmcore")


def _cache_file() -> Path:
    return cache_dir() / "plugin-status.json"


def _module_file(module: str) -> Path | None:
    """The source file of `module`, found without importing it or its parents."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    if not rest:
        return Path(spec.origin)
    base = Path(spec.origin).parent.joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _fingerprint(entry: Entry) -> str:
    """Distribution, version, entry and the mtimes of the module and its top package."""
    stamps = []
    for module in dict.fromkeys([entry.module.split(".")[0], entry.module]):
        path = _module_file(module)
        stamps.append(f"{path}:{path.stat().st_mtime_ns}" if path else f"{module}:missing")
    return f"{entry.distribution}=={entry.version}|{entry.value}|{'|'.join(stamps)}"


def _load_cache() -> dict[str, str]:
    try:
        return dict(json.loads(_cache_file().read_text()))
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict[str, str]) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a re-check next time


def record(entry: Entry, verdict: str) -> None:
    """Remember an in-process import verdict (OK or a one-line error) for `entry`."""
    cache = _load_cache()
    cache[_fingerprint(entry)] = verdict
    _save_cache(cache)


def _probe(entries: list[Entry]) -> dict[str, str]:
    cmd = [sys.executable, "-m", "mmcore.registry._probe", *(f"{e.kind}={e.value}" for e in entries)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        reason = (done.stderr.strip().splitlines() or ["import check crashed"])[-1]
        return {f"{e.kind}={e.value}": reason for e in entries}


def check_entries(entries: list[Entry], refresh: bool = True) -> dict[Entry, str | None]:
    """Verdict per entry: OK, a one-line error, or None when unknown and `refresh` is off."""
    cache = _load_cache()
    prints = {e: _fingerprint(e) for e in entries}
    stale = [e for e in entries if prints[e] not in cache]
    if stale and refresh:
        fresh = _probe(stale)
        for e in stale:
            cache[prints[e]] = fresh.get(f"{e.kind}={e.value}", "not checked")
        _save_cache(cache)
    return {e: cache.get(prints[e]) for e in entries}
