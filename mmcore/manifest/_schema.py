"""The manifest schema (pydantic, unknown keys rejected). Component-specific keys are validated
later against each component's own `Config`, once assembly has resolved its type."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

__all__ = [
    "ComponentSpec",
    "DataSpec",
    "EncoderSpec",
    "EvalSpec",
    "HeadSpec",
    "LoaderSpec",
    "LoraSpec",
    "Manifest",
    "ModelSpec",
    "PluginsSpec",
    "ProjectorSpec",
    "RetrieverSpec",
    "StageSpec",
]

# Keys of a component table that the core reads; every other key belongs to the component.
GENERIC_KEYS = {"type", "modalities", "encoder", "weights", "pack_turns", "dedup", "cache_features"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentSpec(BaseModel):
    """`type` plus the component's own options (checked against its Config at assembly)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    type: str
    # A weights file loaded after construction: safetensors, or a torch pickle (read with weights_only)
    # such as LLaVA's `mm_projector.bin` (its `--pretrain_mm_mlp_adapter`); keys go through the
    # component's `adapt_state_dict`.
    weights: str | None = None
    # Frozen-feature cache (mmcore.cache): store this component's frozen outputs per media item under
    # RUN/feature-cache/ (an encoder's features; a SAM head's image embeddings) and reuse them across epochs and stages
    cache_features: bool = False

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k not in GENERIC_KEYS}


class EncoderSpec(ComponentSpec):
    modalities: list[str] = Field(default_factory=lambda: ["image"], min_length=1)


class ProjectorSpec(ComponentSpec):
    pass


class HeadSpec(ComponentSpec):
    pass


class RetrieverSpec(ComponentSpec):
    encoder: str


class ModelSpec(_Strict):
    llm: ComponentSpec
    encoders: dict[str, EncoderSpec] = Field(default_factory=dict)
    projectors: dict[str, ProjectorSpec] = Field(default_factory=dict)  # keyed by encoder name
    heads: dict[str, HeadSpec] = Field(default_factory=dict)
    retriever: RetrieverSpec | None = None
    max_length: PositiveInt | None = None  # the sequence budget; default min(2048, the LLM's positions)
    # MiniGPT-v2's max_txt_len (minigpt_base.py tokenize_conversation / preparing_embedding): the tokens after the
    # first question (its replies and later questions) are cut to this many; None: no such cut
    max_reply_tokens: PositiveInt | None = None


class LoraSpec(_Strict):
    r: PositiveInt = 8
    alpha: float = 16.0
    dropout: float = Field(0.05, ge=0, lt=1)
    # "all-linear": every linear layer of the LLM except its LM head (LLaVA find_all_linear_names)
    targets: list[str] | Literal["all-linear"] = "all-linear"


class DatasetRef(ComponentSpec):
    # Honeybee multi-turn packing: an image's records become one sample of at most `pack_turns` turns,
    # after dropping repeated answers (or boxes) within the image (its `nturn` and `dedup`)
    pack_turns: PositiveInt | None = None
    dedup: Literal["none", "answer", "box"] = "none"


class DataSpec(_Strict):
    datasets: dict[str, DatasetRef] = Field(default_factory=dict)
    num_workers: int = Field(2, ge=0)
    strict: bool = False  # stop at the first bad record instead of skipping it


class LoaderSpec(_Strict):
    """One dataset's loader under `mixture = "minigpt-v2"` (MiniGPT-v2's `datasets.<name>.batch_size` /
    `sample_ratio`): its own per-device batch, drawn with probability ∝ `sample_ratio`."""

    batch_size: PositiveInt | None = None  # default: the stage's batch_size
    sample_ratio: float = Field(1.0, gt=0)


class StageSpec(_Strict):
    name: str  # names files (RUN/plots/loss-NAME.png, checkpoints): letters, digits, '.', '_', '-'
    trainable: list[str] = Field(default_factory=list)  # "llm", "projectors", "projectors.vision", ...
    lora: LoraSpec | None = None  # LoRA on the LLM through peft
    bias_norm: bool = False  # also train every bias and norm of the LLM (LLaMA-Adapter)
    template: str = "plain"
    datasets: list[str] = Field(default_factory=list)  # which [data.datasets]; empty: all of them
    # explicit weights {name = w}, a strategy, or a tuned preset ("honeybee-finetune")
    mixture: dict[str, float] | str = "uniform"
    sample_cap: PositiveInt | None = None  # size-proportional: at most this many per dataset (Honeybee)
    samples_per_epoch: PositiveInt | None = None  # weighted mixtures: draws per epoch (default: total size)
    # mixture = "minigpt-v2": each dataset's loader (batch_size, sample_ratio); unnamed datasets: the stage's
    # batch_size, ratio 1. Every micro-batch is one draw of one dataset (its MultiIterLoader)
    loaders: dict[str, LoaderSpec] = Field(default_factory=dict)
    epochs: float = Field(1.0, gt=0)
    max_steps: PositiveInt | None = None
    lr: float = Field(1e-3, gt=0)
    lr_per_component: dict[str, float] = Field(default_factory=dict)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    # "linear-warmup-cosine": LAVIS/MiniGPT-4's LinearWarmupCosineLRScheduler (warm-up from warmup_lr, then a
    # cosine over the whole stage to min_lr)
    schedule: Literal["cosine", "constant", "linear", "linear-warmup-cosine"] = "cosine"
    min_lr: float = Field(0.0, ge=0)  # where cosine / linear decay ends (a component's own lr scales it)
    warmup_lr: float = Field(0.0, ge=0)  # where the linear warm-up starts
    batch_size: PositiveInt = 8  # per device
    global_batch_size: PositiveInt | None = None  # sets gradient accumulation from the world size
    gradient_accumulation: PositiveInt = 1
    grad_clip: float | None = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    engine: Literal["single", "ddp", "deepspeed-zero2", "deepspeed-zero3"] = "single"
    group_by_modality_length: bool = False  # LLaVA's LengthGroupedSampler(group_by_modality=True)
    # encoder name → preprocessing options for this stage only, e.g. LLaVA-1.5 pretrains with
    # image_aspect_ratio = "square" and finetunes with "pad": [stages.preprocess.vision]
    preprocess: dict[str, dict[str, Any]] = Field(default_factory=dict)
    log_every: PositiveInt = 10
    save_every: PositiveInt | None = None  # steps between mid-stage checkpoints (none: by wall time only)
    # minutes of training between mid-stage checkpoints (a kill loses at most this much); none: steps only
    save_every_minutes: float | None = Field(30.0, gt=0)
    keep_checkpoints: PositiveInt = 2  # the newest checkpoints kept (a damaged newest falls back to the one before)
    skip_non_finite: bool = False  # skip (and count) a batch whose loss is not finite instead of stopping
    tensorboard: bool = False

    @field_validator("name")
    @classmethod
    def _file_safe(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or ".." in name:
            raise ValueError(f"'{name}' cannot name a file: use letters, digits, '.', '_' or '-' (stage names name "
                             f"RUN/plots/loss-NAME.png and checkpoints)")
        return name


class EvalSpec(_Strict):
    datasets: list[str] = Field(default_factory=list)  # [data.datasets] names evaluated after training
    template: str | None = None  # default: the last stage's
    batch_size: PositiveInt = 8
    max_new_tokens: PositiveInt = 32
    limit: PositiveInt | None = None  # at most this many samples per dataset
    box_codec: str = "honeybee"
    # LLaVA's answer-format line after the question: "short" (single word or phrase), "choice" (option letter)
    answer_format: Literal["none", "short", "choice"] = "none"
    sheet_size: int = Field(12, ge=0)  # images on the PNG sheet
    # "generate": greedy answers scored against the reference; "multi-choice": MiniGPT-v2's multi_select, the
    # candidate answers (a sample's `choices`, else its task's answers in the dataset) ranked by per-sample loss
    mode: Literal["generate", "multi-choice"] = "generate"
    resample: int = Field(0, ge=0)  # eval_ref.py --resample: rounds re-asking (sampled) boxes that did not parse


class PluginsSpec(_Strict):
    files: list[str] = Field(default_factory=list)  # local plugin files, run like conftest.py
    required: list[str] = Field(default_factory=list)  # e.g. "mmcore-plugin-clip>=0.1"


class Manifest(_Strict):
    plugins: PluginsSpec = Field(default_factory=lambda: PluginsSpec())
    model: ModelSpec
    data: DataSpec = Field(default_factory=lambda: DataSpec())
    stages: list[StageSpec] = Field(default_factory=list)
    eval: EvalSpec = Field(default_factory=lambda: EvalSpec())
    seed: int = 0
