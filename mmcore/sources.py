"""Where a component's weights and config come from: a local directory, an offline preset of a
known public checkpoint, or the Hugging Face cache. Nothing here touches the network."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError, choices_text, did_you_mean

__all__ = ["Source", "check_config_table", "config_class", "preset_names", "resolve_source"]


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


def config_class(model_type: str) -> Any:
    """The transformers config class of `model_type`; a ValueError with a did-you-mean otherwise."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"config.model_type '{model_type}' is not a transformers model type"
                         f"{did_you_mean(model_type, CONFIG_MAPPING.keys())}")
    return CONFIG_MAPPING[model_type]


def _known_keys(cls: Any) -> set[str]:
    import inspect

    known = set(inspect.signature(cls.__init__).parameters) | set(getattr(cls, "attribute_map", {}))
    return known | set(cls().to_dict()) - {"self", "kwargs"}


def check_config_table(cls: Any, table: dict[str, Any]) -> Any:
    """Build `cls(**table)` (a transformers config) or raise a one-line ValueError: an unknown key (which
    transformers would keep silently, leaving e.g. a default 32-layer Llama) gets a did-you-mean from the
    class's own fields; a value of the wrong type names the field and what it expects."""
    try:
        built = cls(**table)
    except Exception as err:  # huggingface_hub's StrictDataclassFieldValidationError, TypeError, ValueError
        import re

        text = str(err)
        field = re.search(r"field '(\w+)'", text)
        detail = next((line.strip() for line in text.splitlines() if line.strip().startswith("TypeError:")),
                      text.strip().splitlines()[-1] if text.strip() else type(err).__name__)
        detail = re.sub(r"^Field '\w+' ", "", detail.removeprefix("TypeError: ")).split(". Errors:")[0]
        raise ValueError(f"config.{field.group(1)}: {detail}" if field else f"config: {detail}") from None
    known = _known_keys(cls)
    stored = set(built.to_dict())
    for key in table:
        if key not in known and key in stored:  # kept as a plain attribute: transformers does not know it
            raise ValueError(f"config.{key}: unknown key for {cls.__name__}{did_you_mean(key, known)}")
    return built


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
