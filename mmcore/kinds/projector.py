"""Projectors map encoder `Features` into the LLM, in one of two modes.

* token mode: `forward` returns visual tokens (B, M, D_llm) that the sequence builder splices in
  place of a placeholder; `num_tokens` is M.
* adapter mode (ImageBind-LLM): `forward` returns a condition (B, L, D_llm) that is added inside
  every decoder layer's attention through a zero-initialised, tanh-gated per-head value path; the
  placeholder expands to no tokens.

Several modalities through one adapter projector are combined as the projector declares (`fusion`), never
by one replacing another: "features" fuses the encoder's pooled embeddings before the projector
(ImageBind-LLM `forward_visual`: Σ_m w_m · normalize(f_m), weights normalised over the modalities a sample
has); "conditions" projects each modality and takes the same weighted mean of the conditions.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmcore.errors import MmcoreError
from mmcore.kinds._base import BuildContext, Component, ComponentConfig, FeatureSpec
from mmcore.kinds.encoder import Features

__all__ = ["AdapterProjector", "Projector", "weighted_mean"]


class Projector(Component):
    """Base projector (token mode). Assembly supplies `ctx.upstream` and `ctx.llm_hidden_size`."""

    kind: ClassVar[str] = "projector"
    mode: ClassVar[str] = "tokens"
    requires_grid: ClassVar[bool] = False  # True: the encoder must report a (h, w) grid

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        assert ctx.upstream is not None and ctx.llm_hidden_size is not None  # Contract: assembly wires both
        self.input_spec: FeatureSpec = ctx.upstream
        self.output_dim: int = ctx.llm_hidden_size

    @property
    @abstractmethod
    def num_tokens(self) -> int:
        """Visual tokens per media item that this projector puts into the sequence."""

    def tokens_for(self, spec: FeatureSpec) -> int:
        """Tokens this projector puts into the sequence for one item whose features have `spec` (its encoder's
        `feature_spec(modality)`; token counts are per modality). By default only the features it was built for
        (`input_spec`) → `num_tokens`; a projector that maps each token to one token takes any count (mlp, linear:
        CLIP video's T + N)."""
        if spec == self.input_spec:
            return self.num_tokens
        built = self.input_spec
        raise MmcoreError(f"{type(self).__name__} was built for {built.num_tokens} tokens of width {built.dim} (grid "
                          f"{built.grid}) and cannot take {spec.num_tokens} tokens of width {spec.dim} (grid "
                          f"{spec.grid}); give that modality its own encoder and projector, or use a per-token "
                          f"projector (mlp, linear)")

    @abstractmethod
    def forward(self, features: Features) -> torch.Tensor:
        """Features → (B, num_tokens, D_llm) in token mode, or the adapter condition."""


class AdapterProjector(Projector):
    """Adapter-mode projector: owns one zero-initialised gate per (decoder layer, head).

    ImageBind-LLM (LLaMA-Adapter `llama.py::Attention`): after causal attention,
    `output += gate.tanh() * wv(adapter)` per head, broadcast to every position, then `wo`. With the
    gate at zero the LLM is unchanged at the start of training. The frozen base `wv` projects the
    condition (a LoRA on `wv` is not applied to it).
    """

    mode: ClassVar[str] = "adapter"
    fusion: ClassVar[Literal["features", "conditions"]] = "conditions"

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        sites = ctx.llm_layout
        assert sites, "Contract: assembly passes the LLM's attention sites to adapter projectors"
        self.gates = nn.Parameter(torch.zeros(len(sites), sites[0].num_heads))  # (layers, heads)

    @property
    def num_tokens(self) -> int:
        return 0

    def tokens_for(self, spec: FeatureSpec) -> int:
        return 0  # adapter mode: the condition enters the layers, the placeholder expands to nothing

    def condition_for_layer(self, condition: torch.Tensor, layer: int) -> torch.Tensor | None:
        """The condition seen by `layer` (ImageBind-LLM adds a per-layer prefix query here), or None when the
        adapter does not enter that layer."""
        return condition

    @property
    def gate_weight_decay(self) -> bool:
        """Whether the optimizer decays the gates. Not by default (a zero-init gate pulled to 0 switches the
        adapter off); ImageBind-LLM's `misc.add_weight_decay` decays its 4-D gates (a config's
        `gate_weight_decay = true` reproduces it)."""
        return bool(getattr(self.config, "gate_weight_decay", False))

    def modality_weight(self, modality: str) -> float:
        """The declared weight of a modality in the fusion (a config's `modality_weights`, default 1)."""
        weights = getattr(self.config, "modality_weights", None) or {}
        return float(weights.get(modality, 1.0))

    def fuse_features(self, parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`fusion = "features"`: modality → (pooled (N_m, C), sample index (N_m,)) → (fused (R, C), rows (R,))
        for the R samples that have any of them: Σ_m w'_m · normalize(f_m), w'_m = w_m / (Σ w + 1e-6) over the
        sample's modalities (ImageBind-LLM `forward_visual`; the sum is not re-normalised)."""
        normalised = {m: (F.normalize(pooled, dim=-1), index) for m, (pooled, index) in parts.items()}
        return weighted_mean(normalised, {m: self.modality_weight(m) for m in parts}, batch_size)


def weighted_mean(parts: dict[str, tuple[torch.Tensor, torch.Tensor]], weights: dict[str, float],
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the items of each modality averaged, then Σ_m w_m · mean_m / (Σ_m w_m + 1e-6) over the
    modalities that sample has. parts: modality → ((N_m, *shape), (N_m,) rows) → ((R, *shape), (R,) rows)."""
    first = next(iter(parts.values()))[0]
    total = first.new_zeros((batch_size, *first.shape[1:]))
    weight_sum = first.new_zeros(batch_size)
    seen = torch.zeros(batch_size, dtype=torch.bool, device=first.device)
    for modality, (values, index) in parts.items():
        counts = torch.zeros(batch_size, dtype=values.dtype, device=values.device).index_add(
            0, index, torch.ones_like(index, dtype=values.dtype))
        means = values.new_zeros(total.shape).index_add(0, index, values)
        present = counts > 0
        shape = (-1, *([1] * (values.ndim - 1)))
        means[present] = means[present] / counts[present].view(shape)
        total = total + weights[modality] * means
        weight_sum = weight_sum + weights[modality] * present.to(values.dtype)
        seen |= present
    rows = seen.nonzero().flatten()
    shape = (-1, *([1] * (first.ndim - 1)))
    return total[rows] / (weight_sum[rows] + 1e-6).view(shape), rows
