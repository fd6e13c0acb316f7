"""MiniGPT-v2's projector: concatenate `merge` consecutive tokens, then one Linear (`concat-linear`).

Vision-CAIR/MiniGPT-4 `minigpt4/models/minigpt_v2.py::encode_img` (upstream-systems.md §3.1):

    image_embeds = image_embeds.view(bs, int(pn / 4), int(hs * 4))    # (B, 1024, 1408) → (B, 256, 5632)
    inputs_llama = self.llama_proj(image_embeds)                     # nn.Linear(1408 * 4, hidden)

The `view` merges 4 consecutive row-major tokens: 1 × 4 horizontal strips of the 32 × 32 grid, not 2 × 2
blocks. At 7B: Linear(5632, 4096) = 23,072,768 parameters. Upstream's `llama_proj.*` keys load.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, ComponentConfig, Features, Projector

__all__ = ["ConcatLinearConfig", "ConcatLinearProjector"]


class ConcatLinearConfig(ComponentConfig):
    merge: int = Field(4, ge=1)  # k consecutive row-major tokens concatenated into one (MiniGPT-v2: 4)


class ConcatLinearProjector(Projector):
    Config: ClassVar[type[ComponentConfig]] = ConcatLinearConfig

    def __init__(self, config: ConcatLinearConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        tokens, merge = self.input_spec.num_tokens, config.merge
        if tokens % merge:
            divisors = [d for d in range(2, min(tokens, 16) + 1) if tokens % d == 0]
            raise MmcoreError(f"merge = {merge} does not divide the encoder's {tokens} tokens per item; use a "
                              f"divisor of {tokens} ({', '.join(map(str, divisors)) or 'only 1'}), or drop the CLS "
                              f"token (the encoder's select_feature = \"patch\")")
        self.linear = nn.Linear(self.input_spec.dim * merge, self.output_dim, device=ctx.device)  # llama_proj

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"merge": 4}

    @property
    def num_tokens(self) -> int:
        return self.input_spec.num_tokens // self.config.merge

    def forward(self, features: Features) -> torch.Tensor:
        batch, tokens, width = features.tokens.shape  # (B, N, C)
        merged = features.tokens.reshape(batch, tokens // self.config.merge, width * self.config.merge)  # upstream view
        return self.linear(merged)  # (B, N / k, D_llm)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MiniGPT-v2's `llama_proj.{weight,bias}` (alone or among a checkpoint's other keys) → `linear.*`."""
        if any(k.startswith("llama_proj.") for k in state):
            state = {"linear." + k.removeprefix("llama_proj."): v for k, v in state.items()
                     if k.startswith("llama_proj.")}
        return super().adapt_state_dict(state)
