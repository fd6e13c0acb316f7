"""`bind-network`: ImageBind-LLM's bridge from an ImageBind embedding into every layer of the LLM
(OpenGVLab/LLaMA-Adapter `imagebind_LLM/llama/llama_adapter.py`, upstream-systems.md §4.1–4.2).

    v = proj(f)                                   # Linear(C, D), f = Σ_m w_m·normalize(f_m)   (B, 1, D)
    v = v + f2_i(silu(f1_i(norm_i(v))) * f3_i(norm_i(v)))   for i = 1, 2, 3   # pre-norm SwiGLU, 4D hidden
    layer l of the last `query_layer`:  condition_l = v + prefix_query[l]      (B, 1, D)
    attention output += tanh(gate[l, head]) · wv(condition_l)                  # zero-init gates (core hook)

RMSNorm eps 1e-6 computed in float (upstream `llama.py::RMSNorm`); f1/f2/f3 without bias.
`legacy_bridge`: LayerNorm and biased f1/f2/f3 (upstream builds all three with `bias=bridge_bias`).
Counts at 7B: 608,190,464 (bind network) + 131,072 (prefix, 32 × 4096) + 1,024 (gates, 32 × 32).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from mmcore.errors import MmcoreError
from mmcore.kinds import AdapterProjector, BuildContext, ComponentConfig, Features

__all__ = ["MODALITIES", "BindNetwork", "BindNetworkConfig", "RMSNorm"]

MODALITIES = ("image", "video", "audio", "depth", "thermal", "imu", "point", "text")


class BindNetworkConfig(ComponentConfig):
    query_layer: int | None = Field(None, ge=1)  # adapter in the last N layers; default all (upstream: 32 = 7B's all)
    hidden_multiplier: int = Field(4, ge=1)  # f1/f3: D → 4D (upstream 4096 → 16384)
    legacy_bridge: bool = False
    # ImageBind-LLM's input weights: feats = Σ_m w_m·normalize(f_m) / Σ w (gradio: one weight per input)
    modality_weights: dict[str, float] = Field(default_factory=dict)
    # Quirk (ImageBind-LLM `util/misc.py::add_weight_decay`): the 4-D gates get the stage's weight decay. Off by
    # default here (decay pulls the zero-init gates back to 0); the upstream example turns it on.
    gate_weight_decay: bool = False

    @field_validator("modality_weights", mode="before")
    @classmethod
    def _known_modalities(cls, value: Any) -> Any:
        import difflib

        for key, weight in (value.items() if isinstance(value, dict) else ()):
            if key not in MODALITIES:
                close = difflib.get_close_matches(key, MODALITIES, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"modality_weights.{key}: not a modality{hint}; modalities: {', '.join(MODALITIES)}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"modality_weights.{key}: {weight!r} is not a non-negative number")
        return value


class RMSNorm(nn.Module):
    """LLaMA's RMSNorm: x · rsqrt(mean(x²) + eps) in float, cast back, times weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class BindNetwork(AdapterProjector):
    """Adapter-mode projector over the encoder's pooled embedding; modalities fused before it."""

    Config: ClassVar[type[ComponentConfig]] = BindNetworkConfig
    fusion: ClassVar[Any] = "features"

    def __init__(self, config: BindNetworkConfig, ctx: BuildContext) -> None:
        with ctx.device:
            super().__init__(config, ctx)
            self._build(config, ctx)

    def _build(self, config: BindNetworkConfig, ctx: BuildContext) -> None:
        width = self.input_spec.pooled_dim
        if width is None:
            raise MmcoreError("bind-network reads the encoder's pooled embedding, and this encoder gives none; "
                              "use an encoder with one (imagebind, clip)")
        dim, layers = self.output_dim, len(ctx.llm_layout)
        self.query_layer = config.query_layer or layers
        if self.query_layer > layers:
            raise MmcoreError(f"query_layer {self.query_layer} exceeds the LLM's {layers} layers; use at most {layers}")
        hidden = dim * config.hidden_multiplier
        norm = (lambda: nn.LayerNorm(dim)) if config.legacy_bridge else (lambda: RMSNorm(dim))
        bias = config.legacy_bridge
        self.proj = nn.Linear(width, dim)
        for i in (1, 2, 3):
            self.add_module(f"norm_{i}", norm())
            self.add_module(f"f1_{i}", nn.Linear(dim, hidden, bias=bias))
            self.add_module(f"f2_{i}", nn.Linear(hidden, dim, bias=bias))
            self.add_module(f"f3_{i}", nn.Linear(dim, hidden, bias=bias))
        self.prefix_query = nn.Embedding(self.query_layer, dim)  # query_len 1
        self.first_layer = layers - self.query_layer

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"hidden_multiplier": 2}

    def forward(self, features: Features) -> torch.Tensor:
        if features.pooled is None:
            raise MmcoreError("bind-network needs the encoder's pooled embedding (Features.pooled)")
        v = self.proj(features.pooled.unsqueeze(1))  # (B, 1, D)
        for i in (1, 2, 3):
            normed = getattr(self, f"norm_{i}")(v)
            gate, up = getattr(self, f"f1_{i}")(normed), getattr(self, f"f3_{i}")(normed)
            v = v + getattr(self, f"f2_{i}")(F.silu(gate) * up)
        return v

    def condition_for_layer(self, condition: torch.Tensor, layer: int) -> torch.Tensor | None:
        """Layers before the last `query_layer` run plain; the others see v + prefix_query[l]."""
        if layer < self.first_layer:
            return None
        return condition + self.prefix_query.weight[layer - self.first_layer].to(condition.dtype)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ImageBind-LLM's `.pth` (`{"model": ...}`): `image_bind_proj/norm_i/f*_i`, `prefix_query`, and the
        per-layer `llama.layers.{l}.attention.gate` (1, heads, 1, 1) → gates[l]; `llma` read as `llama`;
        everything else (bias/lora/norm of the LLM) is left to the LLM."""
        nested: Any = state.get("model")
        state = nested if isinstance(nested, dict) else state
        own: dict[str, torch.Tensor] = {}
        gates: dict[int, torch.Tensor] = {}
        for key, value in state.items():
            key = key.replace("llma.", "llama.")
            if key.startswith("image_bind_"):
                own[key.removeprefix("image_bind_")] = value
            elif key.startswith("prefix_query."):
                own[key] = value
            elif key.startswith("llama.layers.") and key.endswith(".attention.gate"):
                gates[int(key.split(".")[2])] = value.reshape(-1)
        if gates:
            own["gates"] = torch.stack([gates[i] for i in sorted(gates)])
        if "prefix_query.weight" in own and own["prefix_query.weight"].shape[0] > self.query_layer:
            # upstream's 32 rows over an LLM with fewer layers: layers[-32:] is every layer, row i for layer i
            own["prefix_query.weight"] = own["prefix_query.weight"][: self.query_layer]
        return own if own else super().adapt_state_dict(state)
