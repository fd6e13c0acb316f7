"""Cross-checks a schema cannot express: projectors keyed by encoders, names, stage references."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from mmcore.errors import ManifestError, PluginError, choices_text, did_you_mean
from mmcore.manifest._locate import line_of
from mmcore.manifest._schema import Manifest

__all__ = ["MIXTURES", "check_manifest", "component_names", "load_plugin_files"]

# Mixture strategies and tuned presets a stage may name (see mmcore.train._mixture).
MIXTURES = ("uniform", "per-task", "size-proportional", "honeybee-finetune", "honeybee-pretrain", "minigpt-v2")


def _error(loaded: Any, loc: tuple[str | int, ...], message: str) -> ManifestError:
    line = line_of(loaded.text, loc)
    return ManifestError(f"{loaded.display}:{line}: {message}" if line else f"{loaded.display}: {message}")


def component_names(manifest: Manifest) -> dict[str, str]:
    """Qualified component names → kind: 'llm', 'encoders.vision', 'projectors.vision', ..."""
    model = manifest.model
    names = {"llm": "llm"}
    names.update({f"encoders.{n}": "encoder" for n in model.encoders})
    names.update({f"projectors.{n}": "projector" for n in model.projectors})
    names.update({f"heads.{n}": "head" for n in model.heads})
    if model.retriever is not None:
        names["retriever"] = "retriever"
    return names


def qualify(manifest: Manifest, name: str) -> list[str]:
    """What a `trainable` / `lr_per_component` entry means: a qualified name, a group, a short name."""
    names = component_names(manifest)
    if name in names:
        return [name]
    group = [q for q in names if q.startswith(f"{name}.")]
    if group:
        return group
    return [q for q in names if q.split(".")[-1] == name]


def _check_model(loaded: Any) -> None:
    model = loaded.manifest.model
    for name in model.projectors:
        if name not in model.encoders:
            raise _error(loaded, ("model", "projectors", name),
                         f"[model.projectors.{name}] projects encoder '{name}', which does not exist"
                         f"{did_you_mean(name, model.encoders)}; a projector's table is named after its "
                         f"encoder (encoders: {choices_text(model.encoders)})")
    for name in model.encoders:
        if name not in model.projectors:
            raise _error(loaded, ("model", "encoders", name),
                         f"[model.encoders.{name}] has no projector; add a [model.projectors.{name}] table")
    owner: dict[str, str] = {}
    for name, spec in model.encoders.items():
        for modality in spec.modalities:
            if modality in owner:
                raise _error(loaded, ("model", "encoders", name, "modalities"),
                             f"[model.encoders.{name}] modalities: '{modality}' is already encoded by "
                             f"'{owner[modality]}'; give each modality one encoder")
            owner[modality] = name
    short: dict[str, str] = {}
    for qualified in component_names(loaded.manifest):
        base = qualified.split(".")[-1]
        kind = qualified.split(".")[0]
        if base in short and short[base] != kind and {kind, short[base]} != {"encoders", "projectors"}:
            raise _error(loaded, ("model", kind, base),
                         f"duplicate component name '{base}' in [model.{short[base]}] and [model.{kind}]; "
                         f"rename one")
        short.setdefault(base, kind)
    if model.retriever is not None and model.retriever.encoder not in model.encoders:
        raise _error(loaded, ("model", "retriever", "encoder"),
                     f"[model.retriever] encoder: '{model.retriever.encoder}' is not an encoder"
                     f"{did_you_mean(model.retriever.encoder, model.encoders)}")


def _check_stages(loaded: Any) -> None:
    manifest = loaded.manifest
    names = list(component_names(manifest))
    seen: set[str] = set()
    for index, stage in enumerate(manifest.stages):
        if stage.name in seen:
            raise _error(loaded, ("stages", index, "name"),
                         f"[[stages]] #{index + 1}: duplicate stage name '{stage.name}'; names must be unique")
        seen.add(stage.name)
        for field in ("trainable", "lr_per_component"):
            for entry in getattr(stage, field):
                inside = field == "trainable" and any(entry.startswith(f"{n}.") for n in names)  # a sub-module
                if not qualify(manifest, entry) and not inside:
                    raise _error(loaded, ("stages", index, field),
                                 f"[[stages]] '{stage.name}' {field}: no component '{entry}'"
                                 f"{did_you_mean(entry, names)}; components: {choices_text(names)}")
        named = [*(stage.mixture if isinstance(stage.mixture, dict) else []), *stage.datasets]
        for dataset in named:
            if dataset not in manifest.data.datasets:
                raise _error(loaded, ("stages", index, "mixture" if dataset in stage.mixture else "datasets"),
                             f"[[stages]] '{stage.name}': no dataset '{dataset}'"
                             f"{did_you_mean(dataset, manifest.data.datasets)}; declare it under "
                             f"[data.datasets.{dataset}]")
        if isinstance(stage.mixture, str) and stage.mixture not in MIXTURES:
            raise _error(loaded, ("stages", index, "mixture"),
                         f"[[stages]] '{stage.name}' mixture: unknown '{stage.mixture}'"
                         f"{did_you_mean(stage.mixture, MIXTURES)}; choose {choices_text(MIXTURES)} or a "
                         f"table of weights")
    for dataset in manifest.eval.datasets:
        if dataset not in manifest.data.datasets:
            raise _error(loaded, ("eval", "datasets"), f"[eval] datasets: no dataset '{dataset}'"
                         f"{did_you_mean(dataset, manifest.data.datasets)}")


def _check_required(loaded: Any) -> None:
    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    for index, text in enumerate(loaded.manifest.plugins.required):
        try:
            requirement = Requirement(text)
        except InvalidRequirement as err:
            raise _error(loaded, ("plugins", "required"),
                         f"[plugins] required #{index + 1}: '{text}' is not a requirement ({err})") from None
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if version not in requirement.specifier:
            missing.append(f"{text} (installed {version})")
    if missing:
        raise _error(loaded, ("plugins", "required"),
                     f"[plugins] required: missing required plugins: {', '.join(missing)}; "
                     f"run `pip install {' '.join(repr(m.split(' (')[0]) for m in missing)}`")


def check_manifest(loaded: Any) -> None:
    _check_model(loaded)
    _check_stages(loaded)
    _check_required(loaded)


def load_plugin_files(data: dict[str, Any], base_dir: Path, shown: Path, text: str, pm: Any,
                      overrides: dict[str, Path]) -> list[tuple[str, Path]]:
    """Run the local plugin files named in `[plugins] files` (like conftest.py) and register their hooks.
    Each name resolves against `base_dir`, or to its entry in `overrides` (a run's copies). Returns
    (name, file) for each; with no plugin manager the files are only checked."""
    from mmcore.registry import load_local_plugin

    files = (data.get("plugins") or {}).get("files") or []
    if not isinstance(files, list):
        return []  # the schema reports the wrong type with its line
    ran = []
    for index, name in enumerate(files):
        line = line_of(text, ("plugins", "files"))
        where = f"{shown}:{line}: [plugins] files #{index + 1}" if line else f"{shown}: [plugins] files"
        if not isinstance(name, str):
            continue  # the schema reports it
        path = overrides.get(name) or (base_dir / name).resolve()
        if path.suffix != ".py":
            raise ManifestError(f"{where}: '{name}' is not a Python file; a local plugin is a .py file with "
                                f"@mmcore.hookimpl functions")
        try:
            if pm is not None:
                load_local_plugin(pm, path, where)
            elif not path.is_file():
                raise PluginError(f"{where}: local plugin file '{path}' does not exist; fix the path (relative "
                                  f"paths are relative to the manifest)")
        except PluginError as err:
            raise ManifestError(str(err)) from err
        ran.append((name, path))
    return ran
