"""Reading a manifest: TOML → local plugins → `mmcore_manifest_loaded` → schema → cross-checks.

Every problem is a `ManifestError` of one line: `file:line: [table] key: problem — did you mean …`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from mmcore.errors import ManifestError, choices_text, did_you_mean
from mmcore.manifest._locate import line_of
from mmcore.manifest._schema import Manifest

__all__ = ["LoadedManifest", "load_manifest", "parse_manifest"]


@dataclass
class LoadedManifest:
    """A validated manifest with its file and text (for error lines), the directory that relative paths
    in it are relative to, and the local plugin files it ran.

    `display` is the file errors name: the user's manifest even when a run's copy is being read.
    """

    manifest: Manifest
    path: Path
    text: str
    base_dir: Path = Path()
    display: Path = Path()
    plugin_files: list[tuple[str, Path]] = field(default_factory=list)  # (as written, the file that ran)

    def __post_init__(self) -> None:
        if self.base_dir == Path():
            self.base_dir = self.path.parent.resolve()
        if self.display == Path():
            self.display = self.path


def _table_and_key(loc: tuple[str | int, ...]) -> str:
    """("model", "llm", "type") → "[model.llm] type"; ("stages", 0, "lora", "r") → "[[stages]] #1 lora.r"."""
    if len(loc) >= 2 and isinstance(loc[1], int):  # an entry of an array of tables
        rest = ".".join(str(p) for p in loc[2:])
        return f"[[{loc[0]}]] #{loc[1] + 1}" + (f" {rest}" if rest else "")
    *table, key = [str(p) for p in loc] or ["(top)"]
    return f"[{'.'.join(table)}] {key}" if table else f"{key}"


def _unwrap(annotation: Any) -> Any:
    """Optional[X] / X | Y → the member that is a model or a container."""
    if get_origin(annotation) in (None, dict, list):
        return annotation
    for member in get_args(annotation):
        if get_origin(member) in (dict, list) or (isinstance(member, type) and issubclass(member, BaseModel)):
            return member
    return annotation


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the last key of `loc`, following dicts and lists."""
    current: Any = model
    for part in loc[:-1]:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _explain(error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(Manifest, loc)
        valid = list(owner.model_fields) if owner else []
        return f"unknown key{did_you_mean(str(loc[-1]), valid)}; valid keys: {choices_text(valid)}"
    if kind == "missing":
        return "is required but missing; add it"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    got = error.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a table"
    if kind in ("model_type", "dict_type", "model_attributes_type"):  # pydantic would name our classes
        return f"must be a table (got {shown})"
    return f"{error['msg']} (got {shown})"


def _hint(loc: tuple[str | int, ...], kind: str) -> str:
    if loc == ("model", "llm") and kind == "missing":
        return " — every model needs an LLM: add a [model.llm] table with type = \"hf-causal-lm\""
    if loc == ("model",) and kind == "missing":
        return " — add a [model] table with at least [model.llm]"
    return ""


def validation_error(err: ValidationError, path: Path, text: str) -> ManifestError:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    line = line_of(text, loc)
    where = f"{path}:{line}" if line else f"{path}"
    return ManifestError(f"{where}: {_table_and_key(loc)} {_explain(first)}{_hint(loc, first['type'])}")


def parse_manifest(path: Path, display: Path | None = None) -> tuple[dict[str, Any], str]:
    """The raw TOML of `path` and its text; a ManifestError for a missing file or bad syntax."""
    shown = display or path
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found; check the path (try `ls {path.parent}`)")
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory; pass the manifest .toml file inside it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{shown}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as err:
        raise ManifestError(f"{shown}: invalid TOML: {err}; fix the syntax there") from err


def load_manifest(path: str | Path, pm: Any = None, base_dir: Path | None = None, display: Path | None = None,
                  plugin_files: dict[str, Path] | None = None) -> LoadedManifest:
    """Parse, run `[plugins] files` and the `mmcore_manifest_loaded` hook, validate, cross-check.

    `base_dir`: where relative paths resolve (default: the manifest's folder); `display`: the file errors
    name; `plugin_files`: manifest entry → the file to run instead (a run's verified copies).
    """
    from mmcore.manifest._checks import check_manifest, load_plugin_files

    path = Path(path)
    shown = display or path
    data, text = parse_manifest(path, shown)
    base = base_dir or path.parent.resolve()
    ran = load_plugin_files(data, base, shown, text, pm, plugin_files or {})
    if pm is not None:
        pm.hook.mmcore_manifest_loaded(data=data, path=str(shown))
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        raise validation_error(err, shown, text) from None
    loaded = LoadedManifest(manifest, path, text, base_dir=base, display=shown, plugin_files=ran)
    check_manifest(loaded)
    return loaded
