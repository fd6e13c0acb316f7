"""What every component shares: a typed pydantic `Config` and a build context from assembly."""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

__all__ = ["BuildContext", "Component", "ComponentConfig", "DataComponent", "FeatureSpec"]


class ComponentConfig(BaseModel):
    """Base of every component's config: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class FeatureSpec:
    """Static shape of an encoder's output for one media item, known before any weight exists."""

    dim: int  # C
    num_tokens: int  # N
    grid: tuple[int, int] | None = None  # (h, w) with h * w == N, or None (CLS kept, audio, ...)
    pooled_dim: int | None = None
    num_levels: int = 1  # > 1 when the encoder returns several layers (D-Abstractor)


@dataclass
class BuildContext:
    """What assembly hands a constructor: its name, upstream dimensions, tokenizer, device.

    Contract: when `device.type == "meta"` a constructor must not read any weight file; it builds
    the same module structure so parameters can be counted and dimensions checked.
    """

    name: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths in configs resolve here
    upstream: FeatureSpec | None = None  # projector / retriever: the encoder's output
    llm_hidden_size: int | None = None  # projector / head: the LLM's width
    llm_layout: Any = None  # adapter projectors: the LLM's AttentionSites
    tokenizer: Any = None  # heads and templates that need token ids

    @property
    def on_meta(self) -> bool:
        return self.device.type == "meta"

    def path(self, value: str) -> Path:
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else self.base_dir / candidate


class Component(nn.Module):
    """Base of the torch components (encoder, projector, llm, head, retriever)."""

    kind: ClassVar[str] = "component"
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    config: Any  # an instance of `Config` (typed Any so subclasses read their own fields)
    # dtype policy: a component that must compute in one dtype whatever the stage's precision sets this (per
    # instance, from its config: `set_compute_dtype`). float32 (the D-Abstractor inside bf16 training): the
    # model runs it with autocast off and its inputs cast. A half dtype (MiniGPT-v2's frozen EVA in fp16):
    # `apply_dtype_policy` stores its weights in that dtype, except the parameters matching `keep_fp32`
    # (fnmatch patterns), and the model runs it under autocast to that dtype, its output cast back to fp32.
    # Every engine keeps the stored dtypes.
    compute_dtype: ClassVar[torch.dtype | None] = None
    keep_fp32: ClassVar[tuple[str, ...]] = ()
    # Sub-modules that never train, even when the component is listed in a stage's `trainable`, unless an
    # entry names them explicitly (a SAM head's image encoder: "image_encoder", u-LLaVA's
    # "mask_decoder.iou_prediction_head").
    frozen_modules: ClassVar[tuple[str, ...]] = ()
    # Components other than encoders that read raw media themselves (a SAM head's own 1024-px image) name
    # the modalities here and return their preprocessing from `media_view`.
    view_modalities: ClassVar[tuple[str, ...]] = ()
    # Frozen-feature cache (`cache_features = true` in the manifest; mmcore.cache): the sub-module whose outputs
    # are cached per media item — "" for the whole component (encoders), "image_encoder" for a SAM head — or None
    # when the component has nothing to cache. The run attaches `feature_cache`; it is bypassed while that
    # sub-module trains.
    cached_module: ClassVar[str | None] = None
    feature_cache: Any = None

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.name = ctx.name

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """A config small enough for CPU conformance tests (`mmcore.testing`)."""
        return {}

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """This instance's `compute_dtype` (from its config, e.g. EVA's `precision`); the class's is the default."""
        self.__dict__["compute_dtype"] = dtype

    def apply_dtype_policy(self) -> None:
        """Store each parameter in `compute_dtype`, or fp32 where its name matches `keep_fp32` (MiniGPT-v2's
        `convert_weights_to_fp16` keeps LayerNorms, position embedding and q/v biases fp32). Idempotent."""
        if self.compute_dtype is None:
            return
        for name, param in self.named_parameters():
            keep = any(fnmatchcase(name, pattern) for pattern in self.keep_fp32)
            target = torch.float32 if keep else self.compute_dtype
            if param.is_floating_point() and param.dtype != target:
                param.data = param.data.to(target)

    def media_view(self, **preprocessing: Any) -> Any:
        """The component's own preprocessing of raw media (a `MediaView`), or None when it reads none."""
        return None

    def keyed_view(self, view: Any) -> Any:
        """`view` as it is, or — with a feature cache attached — `view` whose items carry their cache key in their
        metadata (a digest of the viewed tensor, computed in the data-loader worker). `media_view` returns this."""
        if self.feature_cache is None:
            return view
        from mmcore.cache import KeyedView

        return KeyedView.wrap(view)

    def through_cache(self, inputs: torch.Tensor, metadata: Sequence[dict[str, Any]],
                      compute: Callable[[torch.Tensor], Any], tag: str = "") -> Any:
        """`compute(inputs)` for N items (inputs (N, ...), their view metadata), where `compute` runs
        `cached_module`: with a feature cache attached, the items it holds are read back and only the others
        computed and stored; without one (or while that module trains), exactly `compute(inputs)`."""
        if self.feature_cache is None:
            return compute(inputs)
        return self.feature_cache.run(self, inputs, metadata, compute, tag)

    @classmethod
    def tiny_wiring(cls) -> dict[str, Any]:
        """BuildContext fields to override in conformance tests (e.g. an LLM width equal to the input)."""
        return {}

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a foreign checkpoint's keys onto this module's (`weights = FILE`). The default accepts
        the module's own keys, or keys under one common prefix (`model.mm_projector.`, `abstractor.`)
        that it strips. Components with upstream layouts override this."""
        own = set(self.state_dict())
        if set(state) <= own:
            return state
        for found in state:  # try each prefix that turns one found key into one of ours
            prefixes = [found[: -len(key)] for key in own if found.endswith("." + key)]
            for prefix in prefixes:
                if all(k.startswith(prefix) for k in state) and {k[len(prefix):] for k in state} <= own:
                    return {k[len(prefix):]: v for k, v in state.items()}
        return state  # left to the strict load, which names what does not fit


class DataComponent(ABC):
    """Base of the components that are not modules (dataset, template, box codec): a Config and a name."""

    kind: ClassVar[str] = "data"
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    config: Any

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        self.config = config
        self.name = ctx.name

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """A config small enough for conformance tests (`mmcore.testing`)."""
        return {}
