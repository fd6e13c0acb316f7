"""`assemble`: manifest → resolved components → a `MultimodalModel` (on meta or for real) + checks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from mmcore.assembly._build import ComponentSite, build_component, unknown_template
from mmcore.assembly._params import count, stage_trainable
from mmcore.errors import MmcoreError, choices_text, did_you_mean
from mmcore.kinds import AdapterProjector, BuildContext, ComponentConfig, Encoder
from mmcore.manifest import LoadedManifest, load_manifest
from mmcore.model import MultimodalModel
from mmcore.registry import Registry, Resolved, new_plugin_manager

__all__ = ["Assembly", "assemble", "assemble_loaded"]


@dataclass
class Assembly:
    """The result of assembly: the model, what every component resolved to, and the checks' figures."""

    loaded: LoadedManifest
    model: MultimodalModel
    resolved: dict[str, Resolved]  # qualified name → class and distribution
    configs: dict[str, ComponentConfig]  # qualified name → validated config (defaults filled in)
    parameters: dict[str, int]  # qualified name → parameter count
    max_length: int = 2048  # the sequence budget in effect
    trainable: dict[str, dict[str, int]] = field(default_factory=dict)  # stage → name → count
    registry: Registry | None = None
    pm: Any = None

    @property
    def tokens_per_item(self) -> dict[str, int]:
        return self.model.tokens_per_item


def _context(loaded: LoadedManifest, name: str, device: torch.device, **wiring: Any) -> BuildContext:
    return BuildContext(name=name, device=device, base_dir=loaded.base_dir, **wiring)


def _build_encoders(loaded: LoadedManifest, registry: Registry, device: torch.device,
                    parts: dict[str, Any]) -> dict[str, str]:
    model = loaded.manifest.model
    modality_encoder: dict[str, str] = {}
    for name, spec in model.encoders.items():
        site = ComponentSite(loaded, ("model", "encoders", name))
        encoder, resolved = build_component(site, registry, "encoder", spec, _context(loaded, name, device))
        assert isinstance(encoder, Encoder)
        unsupported = [m for m in spec.modalities if m not in encoder.modalities]
        if unsupported:
            raise site.error(f"'{spec.type}' does not take {unsupported}; it takes {list(encoder.modalities)}",
                             "modalities")
        parts[f"encoders.{name}"] = (encoder, resolved)
        modality_encoder.update(dict.fromkeys(spec.modalities, name))
    return modality_encoder


def _build_projectors(loaded: LoadedManifest, registry: Registry, device: torch.device,
                      parts: dict[str, Any]) -> None:
    llm = parts["llm"][0]
    for name, spec in loaded.manifest.model.projectors.items():
        site = ComponentSite(loaded, ("model", "projectors", name))
        upstream = parts[f"encoders.{name}"][0].output_spec
        cls: Any = registry.resolve("projector", spec.type, where=site.where("type")).cls
        if cls.requires_grid and upstream.grid is None:
            raise site.error(f"'{spec.type}' needs grid-shaped features, but encoder '{name}' reports no "
                             f"grid (for clip: set select_feature = \"patch\" to drop CLS)", "type")
        layout = llm.attention_sites() if issubclass(cls, AdapterProjector) else None
        ctx = _context(loaded, name, device, upstream=upstream, llm_hidden_size=llm.hidden_size,
                       llm_layout=layout, tokenizer=llm.tokenizer)
        parts[f"projectors.{name}"] = build_component(site, registry, "projector", spec, ctx)


def _build_heads(loaded: LoadedManifest, registry: Registry, device: torch.device,
                 parts: dict[str, Any]) -> None:
    llm = parts["llm"][0]
    for name, spec in loaded.manifest.model.heads.items():
        site = ComponentSite(loaded, ("model", "heads", name))
        ctx = _context(loaded, name, device, llm_hidden_size=llm.hidden_size, tokenizer=llm.tokenizer)
        head, resolved = build_component(site, registry, "head", spec, ctx)
        head.trigger_id = llm.add_special_tokens([head.trigger_token])[0]
        parts[f"heads.{name}"] = (head, resolved)
    retriever = loaded.manifest.model.retriever
    if retriever is not None:
        site = ComponentSite(loaded, ("model", "retriever"))
        upstream = parts[f"encoders.{retriever.encoder}"][0].output_spec
        ctx = _context(loaded, "retriever", device, upstream=upstream)
        parts["retriever"] = build_component(site, registry, "retriever", retriever, ctx)


def _check_budget(loaded: LoadedManifest, model: MultimodalModel) -> int:
    """The sequence budget in effect; an error when it exceeds the LLM or cannot hold one item."""
    positions = model.llm.max_position_embeddings
    max_length = loaded.manifest.model.max_length or min(2048, positions)  # LLaVA model_max_length 2048
    site = ComponentSite(loaded, ("model",))
    if max_length > positions:
        raise site.error(f"is {max_length}, above the LLM's max_position_embeddings {positions}; lower it",
                         "max_length")
    for modality, tokens in model.tokens_per_item.items():
        if tokens >= max_length:
            raise site.error(f"is {max_length}, but one {modality} item alone takes {tokens} tokens; "
                             f"raise max_length or use a projector with fewer tokens", "max_length")
    return max_length


def _check_stages(loaded: LoadedManifest, registry: Registry, assembly: Assembly) -> None:
    modules = assembly.model.components()
    targets = assembly.model.llm.lora_target_names()
    for index, stage in enumerate(loaded.manifest.stages):
        site = ComponentSite(loaded, ("stages", index))
        if stage.template not in registry.names("template"):
            raise unknown_template(site, registry, stage.template)
        try:
            assembly.trainable[stage.name] = stage_trainable(loaded.manifest, modules, stage, targets)
        except MmcoreError as err:
            raise site.error(str(err)) from None
        for encoder_name, options in stage.preprocess.items():
            encoder = assembly.model.encoders[encoder_name] if encoder_name in assembly.model.encoders else None
            if encoder is None:
                names = list(assembly.model.encoders)
                raise site.error(f"preprocess names encoder '{encoder_name}'{did_you_mean(encoder_name, names)}; "
                                 f"encoders: {choices_text(names)}", "preprocess")
            try:
                cast(Encoder, encoder).preprocessing_config(**options)
            except (MmcoreError, ValueError) as err:
                first = str(err).splitlines()[0] if isinstance(err, MmcoreError) else _pydantic_line(err)
                raise site.error(f"preprocess.{encoder_name}: {first}", "preprocess") from None


def _pydantic_line(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(err).splitlines()[0]


def assemble_loaded(loaded: LoadedManifest, registry: Registry, device: str | torch.device = "meta",
                    pm: Any = None) -> Assembly:
    """Build every component of an already loaded manifest on `device` and run the checks."""
    device = torch.device(device)
    if device.type != "meta":
        torch.manual_seed(loaded.manifest.seed)  # random-init components are reproducible
    parts: dict[str, Any] = {}
    site = ComponentSite(loaded, ("model", "llm"))
    parts["llm"] = build_component(site, registry, "llm", loaded.manifest.model.llm,
                                   _context(loaded, "llm", device))
    modality_encoder = _build_encoders(loaded, registry, device, parts)
    _build_projectors(loaded, registry, device, parts)
    _build_heads(loaded, registry, device, parts)
    retriever = loaded.manifest.model.retriever
    model = MultimodalModel(
        llm=parts["llm"][0],
        encoders={q.split(".", 1)[1]: p[0] for q, p in parts.items() if q.startswith("encoders.")},
        projectors={q.split(".", 1)[1]: p[0] for q, p in parts.items() if q.startswith("projectors.")},
        modality_encoder=modality_encoder,
        heads={q.split(".", 1)[1]: p[0] for q, p in parts.items() if q.startswith("heads.")},
        retriever=parts["retriever"][0] if "retriever" in parts else None,
        retriever_encoder=retriever.encoder if retriever else None,
    )
    if pm is not None:
        pm.hook.mmcore_model_assembled(model=model, manifest=loaded.manifest)
    max_length = _check_budget(loaded, model)
    assembly = Assembly(loaded, model, {q: p[1] for q, p in parts.items()},
                        {q: p[0].config for q, p in parts.items()},
                        {q: count(m) for q, m in model.components().items()}, max_length=max_length,
                        registry=registry, pm=pm)
    _check_stages(loaded, registry, assembly)
    return assembly


def assemble(manifest: str | Path, device: str | torch.device = "meta",
             registry: Registry | None = None, base_dir: Path | None = None) -> Assembly:
    """Load, validate and assemble `manifest`. On "meta" no weight is read and no memory is used."""
    strict = os.environ.get("MMCORE_STRICT_PLUGINS") == "1"
    pm = new_plugin_manager(strict=strict)
    registry = registry or Registry(strict=strict)
    if strict:
        registry.load_all()
    pm.hook.mmcore_register_components.call_historic(kwargs={"register": registry.register})
    loaded = load_manifest(manifest, pm=pm)
    if base_dir is not None:
        loaded.base_dir = base_dir
    return assemble_loaded(loaded, registry, device, pm)
