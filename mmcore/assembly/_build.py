"""Resolving and building components: config validation with one-line errors, dimension wiring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mmcore.errors import ManifestError, MmcoreError, choices_text, did_you_mean
from mmcore.kinds import BuildContext, ComponentConfig
from mmcore.manifest import ComponentSpec, LoadedManifest
from mmcore.manifest._locate import line_of
from mmcore.registry import Registry, Resolved

__all__ = ["ComponentSite", "build_component", "validate_options"]


class ComponentSite:
    """Where a component sits in the manifest, for error messages: `file:line: [table] ...`."""

    def __init__(self, loaded: LoadedManifest, table: tuple[str | int, ...]) -> None:
        self.loaded = loaded
        self.table = table

    def where(self, key: str | None = None) -> str:
        loc = (*self.table, key) if key else self.table
        line = line_of(self.loaded.text, loc)
        place = f"{self.loaded.path}:{line}" if line else str(self.loaded.path)
        if len(self.table) == 2 and isinstance(self.table[1], int):  # an array of tables: [[stages]] #2
            table = f"[[{self.table[0]}]] #{self.table[1] + 1}"
        else:
            table = f"[{'.'.join(str(p) for p in self.table)}]"
        return f"{place}: {table}" + (f" {key}" if key else "")

    def error(self, message: str, key: str | None = None) -> ManifestError:
        return ManifestError(f"{self.where(key)} {message}")


def validate_options(site: ComponentSite, cls: Any, options: dict[str, Any]) -> ComponentConfig:
    """Validate a component's own keys against its `Config`; unknown keys get a did-you-mean."""
    config_cls: type[ComponentConfig] = cls.Config
    try:
        return config_cls.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        loc = [str(p) for p in first["loc"]]
        key = loc[0] if loc else None
        fields = list(config_cls.model_fields)
        if first["type"] == "extra_forbidden" and key:
            problem = (f"unknown key for {cls.__name__}{did_you_mean(key, fields)}; "
                       f"valid keys: {choices_text([*fields, 'type'])}")
        elif first["type"] == "missing":
            problem = "is required but missing; add it"
        else:
            got = first.get("input")
            shown = "" if isinstance(got, dict) or not loc else f" (got {got!r})"
            problem = first["msg"].removeprefix("Value error, ") + shown
        raise site.error(problem, key) from None


def build_component(site: ComponentSite, registry: Registry, kind: str, spec: ComponentSpec,
                    ctx: BuildContext) -> tuple[Any, Resolved]:
    """Resolve `spec.type`, validate its options, construct it in `ctx` (meta or real)."""
    from mmcore.errors import PluginError

    try:
        resolved = registry.resolve(kind, spec.type, where=site.where("type"))
    except PluginError as err:
        raise ManifestError(str(err)) from None
    config = validate_options(site, resolved.cls, spec.options())
    try:
        component = resolved.cls(config, ctx)
        if spec.weights is not None:
            if not hasattr(component, "adapt_state_dict"):
                raise MmcoreError(f"weights: '{spec.type}' has no weights to load; remove the key")
            _load_weights(component, ctx.path(spec.weights), ctx.on_meta)
        return component, resolved
    except ManifestError:
        raise
    except MmcoreError as err:
        raise site.error(str(err)) from None


def _load_weights(component: Any, path: Path, on_meta: bool) -> None:
    """`weights = "FILE"`: checked on the meta device, loaded (strictly, after key adaptation) otherwise."""
    from mmcore.checkpoint import load_into, read_state_file

    if not path.is_file():
        raise MmcoreError(f"weights {path}: no such file; fix the path")
    if not on_meta:
        load_into(component, component.adapt_state_dict(read_state_file(path)), str(path))


def unknown_template(site: ComponentSite, registry: Registry, name: str) -> ManifestError:
    names = registry.names("template")
    return site.error(f"unknown template '{name}'{did_you_mean(name, names)}; templates: {choices_text(names)}",
                      "template")
