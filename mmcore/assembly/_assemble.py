"""`assemble`: manifest → validated plan → `MultimodalModel` (on meta or for real) + checks.

Order matters for the user: everything that needs no module — every component's type and options, the
transformers config tables, every dataset's options and files, templates, box codec, mixtures — is
checked first, so a typo fails in milliseconds with one line; only then are modules built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from mmcore.assembly._build import ComponentSite, Planned, construct, plan_component
from mmcore.assembly._checks import check_data, check_stage_preprocess
from mmcore.assembly._params import count, stage_counts
from mmcore.errors import ManifestError, MmcoreError
from mmcore.kinds import AdapterProjector, BuildContext, ComponentConfig, Template
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
    trainable: dict[str, dict[str, int]] = field(default_factory=dict)  # stage → name → count (meta only)
    registry: Registry | None = None
    pm: Any = None
    templates: dict[str, Template] = field(default_factory=dict)  # every template the manifest names
    notes: list[str] = field(default_factory=list)  # what the user should know (data not on this machine)

    @property
    def tokens_per_item(self) -> dict[str, int]:
        return self.model.tokens_per_item

    def template(self, name: str) -> Template:
        """A template by name: the manifest's, or any installed one (built with the LLM's tokenizer)."""
        if name not in self.templates:
            assert self.registry is not None  # Contract: assemble_loaded sets it
            cls: Any = self.registry.resolve("template", name).cls
            self.templates[name] = cls(cls.Config(), BuildContext(name=name, tokenizer=self.model.llm.tokenizer))
        return self.templates[name]


def _plan(loaded: LoadedManifest, registry: Registry) -> dict[str, Planned]:
    """Every model component resolved and its options validated, in build order."""
    model = loaded.manifest.model
    plan = {"llm": plan_component(ComponentSite(loaded, ("model", "llm")), registry, "llm", model.llm)}
    for group, kind in (("encoders", "encoder"), ("projectors", "projector"), ("heads", "head")):
        for name, spec in getattr(model, group).items():
            site = ComponentSite(loaded, ("model", group, name))
            plan[f"{group}.{name}"] = plan_component(site, registry, kind, spec)
    if model.retriever is not None:
        plan["retriever"] = plan_component(ComponentSite(loaded, ("model", "retriever")), registry, "retriever",
                                           model.retriever)
    return plan


def _context(loaded: LoadedManifest, name: str, device: torch.device, **wiring: Any) -> BuildContext:
    return BuildContext(name=name, device=device, base_dir=loaded.base_dir, **wiring)


def _data_tokens(loaded: LoadedManifest, registry: Registry) -> list[str]:
    """The special tokens the manifest's datasets declare (their answer format), in manifest order."""
    tokens: list[str] = []
    for name, spec in loaded.manifest.data.datasets.items():
        planned = plan_component(ComponentSite(loaded, ("data", "datasets", name)), registry, "dataset", spec)
        tokens += cast(Any, planned.resolved.cls).special_tokens(planned.config)
    return list(dict.fromkeys(tokens))


def _build(loaded: LoadedManifest, plan: dict[str, Planned], device: torch.device,
           data_tokens: list[str]) -> dict[str, Any]:
    """Construct the planned components, wiring dimensions: LLM, encoders, projectors, heads, retriever.
    Special tokens: the LLM's own list (at its build), then each head's trigger, then the datasets' tokens."""
    parts: dict[str, Any] = {"llm": construct(plan["llm"], _context(loaded, "llm", device))}
    llm = parts["llm"]
    for qualified, planned in plan.items():
        group, _, name = qualified.partition(".")
        if group == "encoders":
            encoder = construct(planned, _context(loaded, name, device))
            spec = loaded.manifest.model.encoders[name]
            unsupported = [m for m in spec.modalities if m not in encoder.modalities]
            if unsupported:
                raise planned.site.error(f"'{spec.type}' does not take {unsupported}; it takes "
                                         f"{list(encoder.modalities)}", "modalities")
            parts[qualified] = encoder
        elif group == "projectors":
            upstream = parts[f"encoders.{name}"].output_spec
            cls: Any = planned.resolved.cls
            if cls.requires_grid and upstream.grid is None:
                raise planned.site.error(f"'{planned.spec.type}' needs grid-shaped features, but encoder '{name}' "
                                         f"reports no grid (for clip: set select_feature = \"patch\" to drop CLS)",
                                         "type")
            layout = llm.attention_sites() if issubclass(cls, AdapterProjector) else None
            parts[qualified] = construct(planned, _context(loaded, name, device, upstream=upstream,
                                                           llm_hidden_size=llm.hidden_size, llm_layout=layout,
                                                           tokenizer=llm.tokenizer))
            _check_tokens(planned, parts[qualified], parts[f"encoders.{name}"], loaded.manifest.model.encoders[name])
        elif group == "heads":
            head = construct(planned, _context(loaded, name, device, llm_hidden_size=llm.hidden_size,
                                               tokenizer=llm.tokenizer))
            head.trigger_id = llm.add_special_tokens([head.trigger_token])[0]
            parts[qualified] = head
        elif group == "retriever":
            encoder_name = cast(Any, loaded.manifest.model.retriever).encoder
            parts[qualified] = construct(planned, _context(loaded, "retriever", device,
                                                           upstream=parts[f"encoders.{encoder_name}"].output_spec))
    if data_tokens:
        llm.add_special_tokens(data_tokens)
    return parts


def _check_tokens(planned: Planned, projector: Any, encoder: Any, spec: Any) -> None:
    """Every modality of the encoder has a token count through its projector (token counts are per modality:
    CLIP video is T + N tokens), else one line naming the projector's table."""
    for modality in spec.modalities:
        try:
            projector.tokens_for(encoder.feature_spec(modality))
        except MmcoreError as err:
            raise planned.site.error(f"cannot take the {modality} features of encoder '{encoder.name}': {err}",
                                     "type") from None


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


def assemble_loaded(loaded: LoadedManifest, registry: Registry, device: str | torch.device = "meta",
                    pm: Any = None, require_data: bool = False) -> Assembly:
    """Check, then build every component of an already loaded manifest on `device`.

    `require_data`: a dataset file missing from this machine is an error (`mmcore assemble -o RUN`), not a note.
    """
    plan = _plan(loaded, registry)
    notes = check_data(loaded, registry, require_data)
    check_stage_preprocess(loaded, plan)
    device = torch.device(device)
    if device.type != "meta":
        torch.manual_seed(loaded.manifest.seed)  # random-init components are reproducible
    data_tokens = _data_tokens(loaded, registry)
    parts = _build(loaded, plan, device, data_tokens)
    retriever = loaded.manifest.model.retriever
    model = MultimodalModel(
        llm=parts["llm"],
        encoders={q.split(".", 1)[1]: p for q, p in parts.items() if q.startswith("encoders.")},
        projectors={q.split(".", 1)[1]: p for q, p in parts.items() if q.startswith("projectors.")},
        modality_encoder={m: n for n, s in loaded.manifest.model.encoders.items() for m in s.modalities},
        heads={q.split(".", 1)[1]: p for q, p in parts.items() if q.startswith("heads.")},
        retriever=parts.get("retriever"),
        retriever_encoder=retriever.encoder if retriever else None,
    )
    heads = [parts[q].trigger_token for q in plan if q.startswith("heads.")]
    own = list(getattr(parts["llm"].config, "special_tokens", None) or [])
    model.declared_tokens = list(dict.fromkeys(own + heads + data_tokens))
    if pm is not None:
        pm.hook.mmcore_model_assembled(model=model, manifest=loaded.manifest)
    assembly = Assembly(loaded, model, {q: p.resolved for q, p in plan.items()}, {q: p.config for q, p in plan.items()},
                        {q: count(m) for q, m in model.components().items()}, max_length=_check_budget(loaded, model),
                        registry=registry, pm=pm, notes=notes)
    named = [s.template for s in loaded.manifest.stages] + [loaded.manifest.eval.template or ""]
    for name in dict.fromkeys(n for n in named if n):
        assembly.template(name)
    if device.type == "meta":
        for index, stage in enumerate(loaded.manifest.stages):
            try:
                assembly.trainable[stage.name] = stage_counts(model.components(), loaded.manifest, stage)
            except ManifestError:
                raise
            except Exception as err:  # an MmcoreError: name the stage's table
                raise ComponentSite(loaded, ("stages", index)).error(str(err)) from None
    return assembly


def assemble(manifest: str | Path, device: str | torch.device = "meta", registry: Registry | None = None,
             base_dir: Path | None = None, display: Path | None = None, plugin_files: dict[str, Path] | None = None,
             providers: set[tuple[str, str]] | None = None, require_data: bool = False) -> Assembly:
    """Load, validate and assemble `manifest`. On "meta" no weight is read and no memory is used.

    A run's own `RUN/manifest.toml` resolves paths against the folder it was first assembled from.
    `providers`: (type, distribution) pairs a lock remembers, so a missing plugin names what to install.
    """
    from mmcore.run import Run

    path = Path(manifest)
    owner = Run.owning(path) if base_dir is None else None
    if owner is not None:
        base_dir = owner.lock.base_dir
        if any(not (base_dir / e["name"]).is_file() for e in owner.lock.plugin_files):  # the run's copies run:
            copies = owner.plugin_files()  # named, checked against their sha256, refusable like any command's
            plugin_files = {n: p for n, p in copies.items() if not (base_dir / n).is_file()}
    strict = os.environ.get("MMCORE_STRICT_PLUGINS") == "1"
    pm = new_plugin_manager(strict=strict)
    registry = registry or Registry(strict=strict, providers=providers)
    if strict:
        registry.load_all()
    pm.hook.mmcore_register_components.call_historic(kwargs={"register": registry.register})
    loaded = load_manifest(path, pm=pm, base_dir=base_dir, display=display, plugin_files=plugin_files)
    return assemble_loaded(loaded, registry, device, pm, require_data)

