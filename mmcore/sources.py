"""Where a component's weights and config come from: a local directory, an offline preset of a
known public checkpoint, or the Hugging Face cache. Nothing here touches the network."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError, choices_text, did_you_mean

__all__ = ["Source", "preset_names", "resolve_source"]


@dataclass(frozen=True)
class Source:
    """A resolved `source`: its config dict and, when weights exist on disk, where they are."""

    name: str
    config: dict[str, Any]
    origin: str  # "local" | "preset" | "hf-cache"
    path: Path | None  # a directory `from_pretrained` can read, or None


def _preset_file(name: str) -> Any:
    return resources.files("mmcore.presets").joinpath(name.replace("/", "--") + ".json")


def preset_names() -> list[str]:
    files = resources.files("mmcore.presets").iterdir()
    return sorted(f.name[:-5].replace("--", "/") for f in files if f.name.endswith(".json"))


def _from_hf_cache(name: str) -> Source | None:
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, local_files_only=True))
    except Exception:
        return None
    config = folder / "config.json"
    if not config.exists():
        return None
    return Source(name, json.loads(config.read_text()), "hf-cache", folder)


def resolve_source(value: str, base_dir: Path) -> Source:
    """Resolve `value` (path, preset or hub id) or raise a one-line MmcoreError saying what to do."""
    local = Path(value).expanduser()
    local = local if local.is_absolute() else base_dir / local
    if local.is_dir():
        config = local / "config.json"
        if not config.exists():
            raise MmcoreError(f"source '{value}': directory {local} has no config.json; point it at a "
                              f"directory written by save_pretrained")
        try:
            return Source(value, json.loads(config.read_text()), "local", local)
        except ValueError as err:
            raise MmcoreError(f"source '{value}': {config} is not valid JSON ({err}); re-save it") from None
    cached = _from_hf_cache(value)
    if cached is not None:
        return cached
    preset = _preset_file(value)
    if preset.is_file():
        config = json.loads(preset.read_text())
        config.pop("_source", None)
        return Source(value, config, "preset", None)
    if value.startswith((".", "/", "~")) or value.count("/") > 1:
        raise MmcoreError(f"source '{value}': no such directory ({local}); fix the path")
    raise MmcoreError(f"source '{value}' is not a local directory, not in the Hugging Face cache and not "
                      f"a known preset{did_you_mean(value, preset_names())}; there is no network here, so "
                      f"download it elsewhere and point source at the directory (presets: "
                      f"{choices_text(preset_names())})")
