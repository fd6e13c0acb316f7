"""LLaVA's projectors (`llava/model/multimodal_projector/builder.py`, upstream-systems.md §1.2).

* `linear`: `nn.Linear(mm_hidden_size, hidden_size)`.
* `mlp` (`mlp{N}x_gelu`): `Linear(mm, h)` then `[GELU, Linear(h, h)] × (N − 1)`; `layers.{0,2,…}` hold
  the weights, matching LLaVA's `model.mm_projector.{0,2,…}` indices.
* `identity`: passes features through; the encoder width must equal the LLM width.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, ComponentConfig, Features, FeatureSpec, Projector

__all__ = ["IdentityProjector", "LinearProjector", "MlpConfig", "MlpProjector"]


class MlpConfig(ComponentConfig):
    depth: int = Field(2, ge=1, le=16)  # N of mlpNx_gelu; LLaVA-1.5 uses 2


class _TokenwiseProjector(Projector):
    """Projectors that map each input token to one output token."""

    layers: nn.Module

    @property
    def num_tokens(self) -> int:
        return self.input_spec.num_tokens

    def tokens_for(self, spec: FeatureSpec) -> int:
        """One token per input token, whatever the count (CLIP video: T temporal + N spatial, u-LLaVA)."""
        if spec.dim != self.input_spec.dim:
            return super().tokens_for(spec)  # the one-line error naming both widths
        return spec.num_tokens

    def forward(self, features: Features) -> torch.Tensor:
        return self.layers(features.tokens)  # (B, N, C) → (B, N, D_llm)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """LLaVA layouts (`mm_projector.bin`, `non_lora_trainables.bin`, full checkpoints): keep the keys
        after `mm_projector.` as LLaVA's `get_w` does, so `model.mm_projector.0.weight` → `layers.0.weight`.
        transformers' Llava: `multi_modal_projector.linear_1/linear_2` → `layers.0/layers.2`."""
        if any("mm_projector." in k for k in state):
            state = {"layers." + k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
        elif any("multi_modal_projector." in k for k in state):
            index = {"linear_1": "layers.0.", "linear_2": "layers.2."}
            state = {index[k.split("multi_modal_projector.", 1)[1].split(".")[0]] + k.rsplit(".", 1)[1]: v
                     for k, v in state.items() if "multi_modal_projector." in k}
        return super().adapt_state_dict(state)


class MlpProjector(_TokenwiseProjector):
    Config: ClassVar[type[ComponentConfig]] = MlpConfig

    def __init__(self, config: MlpConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        modules: list[nn.Module] = [nn.Linear(self.input_spec.dim, self.output_dim, device=ctx.device)]
        for _ in range(config.depth - 1):
            modules += [nn.GELU(), nn.Linear(self.output_dim, self.output_dim, device=ctx.device)]
        self.layers = nn.Sequential(*modules)

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"depth": 2}


class LinearProjector(_TokenwiseProjector):
    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.layers = nn.Linear(self.input_spec.dim, self.output_dim, device=ctx.device)


class IdentityProjector(_TokenwiseProjector):
    @classmethod
    def tiny_wiring(cls) -> dict[str, Any]:
        return {"llm_hidden_size": 32}  # identity needs the LLM width to equal the encoder width

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        if self.input_spec.dim != self.output_dim:
            raise MmcoreError(f"identity needs the encoder width ({self.input_spec.dim}) to equal the LLM "
                              f"width ({self.output_dim}); use type = \"linear\" or \"mlp\"")
        self.layers = nn.Identity()
