"""Honeybee's C-Abstractor (`honeybee/projectors/projectors.py::CAbstractor`, upstream-systems.md §2.2).

    (B, L, C) → (B, C, h, w) → RegStage(depth, C → hidden) → AdaptiveAvgPool2d(√M) → RegStage(depth,
    hidden → hidden) → (B, M, hidden) → readout MLP (SiLU, mlp_depth) → (B, M, D_llm)

`RegStage` is timm's, with stride 1, dilation 1, SiLU and `LayerNorm2d` (Honeybee's `RegBlock`).
With depth 0 the net is the pool alone and the readout reads the encoder width. `num_queries` may
exceed the input token count (the pool then upsamples). Module names (`net.0.b1.conv1…`, `readout.0`)
are Honeybee's, so its `abstractor.*` keys load unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from mmcore.kinds import BuildContext, ComponentConfig, Features
from mmcore_plugin_c_abstractor.base import HoneybeeProjector, HoneybeeProjectorConfig, build_mlp

__all__ = ["CAbstractor", "CAbstractorConfig"]


class CAbstractorConfig(HoneybeeProjectorConfig):
    depth: int = Field(3, ge=0)  # RegStage blocks in each of the two stages (c-abs.yaml: 3)
    mlp_depth: int = Field(2, ge=1)  # readout MLP depth (c-abs.yaml: 2)


class CAbstractor(HoneybeeProjector):
    Config: ClassVar[type[ComponentConfig]] = CAbstractorConfig

    def __init__(self, config: CAbstractorConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        from timm.layers import LayerNorm2d
        from timm.models.regnet import RegStage

        width, hidden = self.input_spec.dim, config.hidden_size
        with ctx.device:
            block = partial(RegStage, stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=LayerNorm2d)
            sampler = nn.AdaptiveAvgPool2d((self.side, self.side))
            if config.depth:
                self.net: nn.Module = nn.Sequential(block(config.depth, width, hidden), sampler,
                                                    block(config.depth, hidden, hidden))
            else:
                self.net = sampler
            self.readout = build_mlp(config.mlp_depth, hidden if config.depth else width, self.output_dim)

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"num_queries": 4, "hidden_size": 16, "depth": 1, "mlp_depth": 2}

    def abstract(self, x: torch.Tensor, features: Features) -> torch.Tensor:
        batch, _, width = x.shape
        h, w = self.input_spec.grid or (0, 0)
        x = x.transpose(1, 2).reshape(batch, width, h, w)  # "b (h w) d -> b d h w"
        x = self.net(x)
        x = x.flatten(2).transpose(1, 2)  # "b d h w -> b (h w) d"
        return self.readout(x)
