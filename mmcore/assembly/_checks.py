"""Assembly checks beyond the model: datasets (options and files), templates, box codec, mixtures, and
stage settings that need the built modules (preprocessing overrides)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from mmcore.assembly._build import ComponentSite, plan_component
from mmcore.errors import MmcoreError, PluginError, choices_text, did_you_mean
from mmcore.manifest import LoadedManifest, StageSpec
from mmcore.registry import Registry

__all__ = ["check_data", "check_stage_preprocess", "stage_datasets"]


def stage_datasets(manifest: Any, stage: StageSpec) -> list[str]:
    """The datasets a stage draws from: its `datasets`, else its mixture's (or its `loaders`'), else all of
    [data.datasets]."""
    if stage.datasets:
        return list(stage.datasets)
    if isinstance(stage.mixture, dict):
        return list(stage.mixture)
    if stage.loaders:
        return list(stage.loaders)
    return list(manifest.data.datasets)


def _resolve(site: ComponentSite, registry: Registry, kind: str, name: str, key: str) -> None:
    try:
        registry.resolve(kind, name)
    except PluginError as err:
        names = registry.names(kind)
        if name in names:  # installed but broken: the registry's message says why
            raise site.error(str(err), key) from None
        raise site.error(f"unknown {kind.replace('_', ' ')} '{name}'{did_you_mean(name, names)}; installed: "
                         f"{choices_text(names)}", key) from None


def _check_datasets(loaded: LoadedManifest, registry: Registry, require: bool) -> list[str]:
    notes = []
    for name, spec in loaded.manifest.data.datasets.items():
        site = ComponentSite(loaded, ("data", "datasets", name))
        planned = plan_component(site, registry, "dataset", spec)
        dataset_cls: Any = planned.resolved.cls
        for key, value in dataset_cls.data_paths(planned.config).items():
            path = (loaded.base_dir / value).resolve()
            if path.exists():
                continue
            if require:
                raise site.error(f"{path} does not exist; fix the path (relative paths are relative to the manifest)",
                                 key)
            notes.append(f"[data.datasets.{name}] {key}: {path} is not on this machine")
    return notes


def _check_stage(loaded: LoadedManifest, registry: Registry, index: int, stage: StageSpec) -> None:
    from mmcore.data import PRESETS

    site = ComponentSite(loaded, ("stages", index))
    _resolve(site, registry, "template", stage.template, "template")
    names = stage_datasets(loaded.manifest, stage)
    if not names:
        raise site.error("draws from no dataset; declare one under [data.datasets.NAME]", "datasets")
    if isinstance(stage.mixture, str) and stage.mixture in PRESETS:
        missing = sorted(set(PRESETS[stage.mixture]) - set(names))
        if missing:
            raise site.error(f"'{stage.mixture}' weighs datasets {sorted(PRESETS[stage.mixture])}; this stage lacks "
                             f"{missing} — name your [data.datasets] tables after them", "mixture")
    _check_loaders(site, loaded, stage, names)


def _check_loaders(site: ComponentSite, loaded: LoadedManifest, stage: StageSpec, names: list[str]) -> None:
    """`mixture = "minigpt-v2"` and its `loaders`: known datasets of the stage, and no stage key that assumes one
    batch size."""
    if stage.mixture != "minigpt-v2":
        if stage.loaders:
            raise site.error('per-dataset loaders need mixture = "minigpt-v2" (MiniGPT-v2\'s MultiIterLoader); set '
                             'it, or remove [stages.loaders]', "loaders")
        return
    known = list(loaded.manifest.data.datasets)
    for name in stage.loaders:
        if name not in names or name not in known:
            where = "the stage's datasets" if stage.datasets else "[data.datasets]"
            choices = names if stage.datasets else known
            raise site.error(f"names dataset '{name}', which is not among {where}{did_you_mean(name, choices)}; "
                             f"choose from {choices_text(choices)}", f"loaders.{name}")
    for key, value in (("global_batch_size", stage.global_batch_size),
                       ("group_by_modality_length", stage.group_by_modality_length)):
        if value:
            raise site.error(f'{key} assumes one batch size; with mixture = "minigpt-v2" each dataset has its own '
                             f"(loaders) — remove {key} (set gradient_accumulation for more draws per step)", key)

def check_data(loaded: LoadedManifest, registry: Registry, require_files: bool) -> list[str]:
    """Datasets, stage templates and mixtures, the eval template and box codec. Returns notes (data files
    not on this machine when `require_files` is off)."""
    notes = _check_datasets(loaded, registry, require_files)
    for index, stage in enumerate(loaded.manifest.stages):
        _check_stage(loaded, registry, index, stage)
    site = ComponentSite(loaded, ("eval",))
    if loaded.manifest.eval.template is not None:
        _resolve(site, registry, "template", loaded.manifest.eval.template, "template")
    _resolve(site, registry, "box_codec", loaded.manifest.eval.box_codec, "box_codec")
    return notes


def check_stage_preprocess(loaded: LoadedManifest, plan: dict[str, Any]) -> None:
    """Per-stage preprocessing overrides: a known encoder, options it lets a stage change, valid values —
    checked on the planned encoders, before any module is built."""
    encoders = {q.split(".", 1)[1]: p for q, p in plan.items() if q.startswith("encoders.")}
    for index, stage in enumerate(loaded.manifest.stages):
        site = ComponentSite(loaded, ("stages", index))
        for encoder_name, options in stage.preprocess.items():
            key = f"preprocess.{encoder_name}"
            if encoder_name not in encoders:
                names = list(encoders)
                raise site.error(f"names encoder '{encoder_name}'{did_you_mean(encoder_name, names)}; "
                                 f"encoders: {choices_text(names)}", key)
            planned = encoders[encoder_name]
            try:
                planned.resolved.cls.check_preprocessing(planned.config, **options)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise site.error(f"{where}: {first['msg']}", key) from None
            except MmcoreError as err:
                raise site.error(str(err), key) from None
