"""Resolving components and validating their options (no module built), then constructing them.

Every error is a `ManifestError` of one line naming the user's manifest, the line, the table and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mmcore.errors import ManifestError, MmcoreError, PluginError, choices_text, did_you_mean
from mmcore.kinds import BuildContext, ComponentConfig
from mmcore.manifest import ComponentSpec, LoadedManifest
from mmcore.manifest._locate import line_of
from mmcore.registry import Registry, Resolved

__all__ = ["ComponentSite", "Planned", "build_component", "construct", "plan_component", "validate_options"]


class ComponentSite:
    """Where a component sits in the manifest, for error messages: `file:line: [table] ...`."""

    def __init__(self, loaded: LoadedManifest, table: tuple[str | int, ...]) -> None:
        self.loaded = loaded
        self.table = table

    def where(self, key: str | None = None) -> str:
        loc = (*self.table, *(key.split(".") if key else ()))
        line = line_of(self.loaded.text, loc)
        place = f"{self.loaded.display}:{line}" if line else str(self.loaded.display)
        if len(self.table) == 2 and isinstance(self.table[1], int):  # an array of tables: [[stages]] #2
            table = f"[[{self.table[0]}]] #{self.table[1] + 1}"
        else:
            table = f"[{'.'.join(str(p) for p in self.table)}]"
        return f"{place}: {table}" + (f" {key}" if key else "")

    def error(self, message: str, key: str | None = None) -> ManifestError:
        return ManifestError(f"{self.where(key)} {message}")


@dataclass
class Planned:
    """A component whose class is resolved and whose options are validated; nothing built yet."""

    site: ComponentSite
    spec: ComponentSpec
    resolved: Resolved
    config: ComponentConfig


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
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden" and key:
            problem = (f"unknown key for {cls.__name__}{did_you_mean(key, fields)}; "
                       f"valid keys: {choices_text([*fields, 'type'])}")
        elif first["type"] == "missing":
            problem = "is required but missing; add it"
        elif message.startswith("config.") or message.startswith("config:"):  # a transformers config table
            key, _, problem = message.partition(": ")
        else:
            got = first.get("input")
            shown = "" if isinstance(got, dict) or not loc else f" (got {got!r})"
            problem = message + shown
        raise site.error(problem, key) from None


def plan_component(site: ComponentSite, registry: Registry, kind: str, spec: ComponentSpec) -> Planned:
    """Resolve `spec.type` and validate its options — the whole check, with no module built."""
    try:
        resolved = registry.resolve(kind, spec.type, where=site.where("type"))
    except PluginError as err:
        raise ManifestError(str(err)) from None
    return Planned(site, spec, resolved, validate_options(site, resolved.cls, spec.options()))


def construct(planned: Planned, ctx: BuildContext) -> Any:
    """Build a planned component in `ctx` (meta or real) and load its `weights = FILE`."""
    try:
        component = planned.resolved.cls(planned.config, ctx)
        if getattr(planned.spec, "cache_features", False) and getattr(component, "cached_module", None) is None:
            raise MmcoreError(f"cache_features: '{planned.spec.type}' has no frozen features to cache (encoders and "
                              f"heads with a frozen image encoder do); remove the key")
        if planned.spec.weights is not None:
            if not hasattr(component, "adapt_state_dict"):
                raise MmcoreError(f"weights: '{planned.spec.type}' has no weights to load; remove the key")
            _load_weights(component, ctx.path(planned.spec.weights), ctx.on_meta)
        return component
    except ManifestError:
        raise
    except MmcoreError as err:
        raise planned.site.error(str(err)) from None


def build_component(site: ComponentSite, registry: Registry, kind: str, spec: ComponentSpec,
                    ctx: BuildContext) -> tuple[Any, Resolved]:
    """`plan_component` then `construct`: for components built on their own (datasets at train time)."""
    planned = plan_component(site, registry, kind, spec)
    return construct(planned, ctx), planned.resolved


def _load_weights(component: Any, path: Path, on_meta: bool) -> None:
    """`weights = "FILE"`: checked on the meta device, loaded (strictly, after key adaptation) otherwise."""
    from mmcore.checkpoint import load_into, read_state_file

    if not path.is_file():
        raise MmcoreError(f"weights {path}: no such file; fix the path")
    if not on_meta:
        load_into(component, component.adapt_state_dict(read_state_file(path)), str(path))
