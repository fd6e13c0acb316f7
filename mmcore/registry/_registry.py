"""The registry: installed entry points plus components registered at run time, resolved lazily."""

from __future__ import annotations

from dataclasses import dataclass

from mmcore.errors import PluginError, choices_text, did_you_mean
from mmcore.registry import _status
from mmcore.registry._discovery import Entry, discover_entries, plugin_filter
from mmcore.registry._kinds import KINDS, KNOWN_PROVIDERS
from mmcore.registry._resolve import import_component

__all__ = ["Registry", "Resolved"]


@dataclass(frozen=True)
class Resolved:
    """A component class and where it came from (for the summary table and the lock)."""

    kind: str
    name: str
    cls: type
    distribution: str
    version: str


class Registry:
    """Lookup of component classes by (kind, name).

    Discovery reads metadata only; `resolve` imports on first use. A broken plugin fails only
    when a manifest uses it, unless `strict` (MMCORE_STRICT_PLUGINS=1) re-raises at once.
    """

    def __init__(self, entries: list[Entry] | None = None, strict: bool = False,
                 providers: set[tuple[str, str]] | None = None) -> None:
        self.entries = discover_entries() if entries is None else entries
        self.strict = strict
        self.providers = dict(providers or ())  # type → distribution, remembered by a run's lock
        self._dynamic: dict[tuple[str, str], Resolved] = {}
        self._cache: dict[tuple[str, str], Resolved] = {}

    # --- run-time registration (local plugin files, hooks) -------------------------------------
    def register(self, kind: str, name: str, cls: type, source: str = "local") -> None:
        """Register `cls` as the `kind` component `name` (called from `mmcore_register_components`)."""
        if kind not in KINDS:
            raise PluginError(f"{source}: unknown component kind '{kind}'{did_you_mean(kind, KINDS)}")
        from mmcore.kinds import BASE_CLASSES

        if not (isinstance(cls, type) and issubclass(cls, BASE_CLASSES[kind])):
            raise PluginError(f"{source}: {cls!r} registered as {kind} '{name}' is not a "
                              f"{BASE_CLASSES[kind].__name__}")
        claimed = self._claims(kind, name)
        if claimed or (kind, name) in self._dynamic:
            other = claimed[0].distribution if claimed else self._dynamic[(kind, name)].distribution
            raise PluginError(f"{kind} '{name}' is claimed by both '{other}' and '{source}'; "
                              f"rename one of them")
        self._dynamic[(kind, name)] = Resolved(kind, name, cls, source, "local")

    # --- lookup --------------------------------------------------------------------------------
    def _claims(self, kind: str, name: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind and e.name == name
                and plugin_filter(e.distribution) is None]

    def names(self, kind: str) -> list[str]:
        on = {e.name for e in self.entries if e.kind == kind and plugin_filter(e.distribution) is None}
        return sorted(on | {n for (k, n) in self._dynamic if k == kind})

    def resolve(self, kind: str, name: str, where: str = "") -> Resolved:
        """The class for `kind` `name`, imported now; a PluginError says what to do otherwise."""
        key = (kind, name)
        if key in self._dynamic:
            return self._dynamic[key]
        if key in self._cache:
            return self._cache[key]
        prefix = f"{where}: " if where else ""
        claims = self._claims(kind, name)
        if not claims:
            raise PluginError(prefix + self._unknown(kind, name))
        if len(claims) > 1:
            names = " and ".join(f"'{e.distribution} {e.version}'" for e in claims)
            raise PluginError(f"{prefix}{kind} type '{name}' is claimed by both {names}; "
                              f"uninstall one of them")
        entry = claims[0]
        label = f"{kind} '{name}' from {entry.distribution} {entry.version}"
        try:
            cls = import_component(kind, entry.value, where=label)
        except PluginError as err:
            _status.record(entry, str(err))
            raise PluginError(f"{prefix}{err}") from err
        _status.record(entry, _status.OK)
        resolved = Resolved(kind, name, cls, entry.distribution, entry.version)
        self._cache[key] = resolved
        return resolved

    def _unknown(self, kind: str, name: str) -> str:
        message = f"unknown {kind} type '{name}'{did_you_mean(name, self.names(kind))}"
        provider = KNOWN_PROVIDERS.get(kind, {}).get(name) or self.providers.get(name)
        off = [e for e in self.entries if e.kind == kind and e.name == name]
        if off:
            return f"{message}: '{off[0].distribution}' provides it but is {plugin_filter(off[0].distribution)}"
        if provider:
            return f"{message}: it is provided by '{provider}' — run `pip install {provider}`"
        return f"{message}; installed {kind} types: {choices_text(self.names(kind))}"

    def load_all(self) -> list[tuple[Entry, str]]:
        """Import every enabled entry (strict mode, `--check`): [(entry, verdict)]."""
        verdicts = []
        for entry in self.entries:
            if plugin_filter(entry.distribution) is not None:
                continue
            try:
                self.resolve(entry.kind, entry.name)
                verdicts.append((entry, _status.OK))
            except PluginError as err:
                if self.strict:
                    raise
                verdicts.append((entry, str(err)))
        return verdicts
