"""Upstream EVA checkpoints → the encoder's keys: `eva_vit_g.pth` 1:1, position embedding resized, extras dropped.

BLIP-2 / MiniGPT-v2 (`minigpt4/models/eva_vit.py::create_eva_vit_g`) load LAVIS' `eva_vit_g.pth` with
`interpolate_pos_embed` (16×16 → 32×32 at 448: bicubic, `align_corners=False`, no antialias, in fp32, CLS slot
kept) and `load_state_dict(strict=False)`, which ignores keys the 39-block tower does not have. timm's own
`checkpoint_filter_fn` resizes with antialias and differs (next-systems.md §1.3), so it is not used.
"""

from __future__ import annotations

import math
import sys

import torch

__all__ = ["map_upstream_state", "resize_pos_embed"]


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """(1, P + n × n, C) → (1, P + h × w, C): the grid part bicubic without antialias, as upstream's
    `interpolate_pos_embed`; the P prefix (CLS) slots unchanged."""
    from timm.layers import resample_abs_pos_embed

    side = math.isqrt(pos_embed.shape[1] - num_prefix_tokens)
    return resample_abs_pos_embed(pos_embed.float(), new_size=list(grid), old_size=[side, side],
                                  num_prefix_tokens=num_prefix_tokens, interpolation="bicubic", antialias=False)


def map_upstream_state(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], tower: str,
                       grid: tuple[int, int], num_prefix_tokens: int) -> dict[str, torch.Tensor]:
    """Map `state` onto `own` keys: own keys as they are, bare tower keys (`blocks.0.attn.q_bias`, as in
    `eva_vit_g.pth`) under `tower.`; a position embedding of another grid is resized; own keys the file lacks
    but that upstream never saves (MiniGPT-v2's frozen `ln_vision`) keep their initial values; any other key is
    reported in one line and dropped (upstream's strict=False)."""
    mapped: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state.items():
        name = key if key in own else f"{tower}.{key}"
        if name in own:
            mapped[name] = value
        else:
            dropped.append(key)
    if dropped:
        shown = ", ".join(dropped[:4]) + (", …" if len(dropped) > 4 else "")
        print(f"note: EVA weights: dropped {len(dropped)} keys this tower does not have ({shown}), as upstream's "
              f"load_state_dict(strict=False) does", file=sys.stderr)
    pos_key = f"{tower}.pos_embed"
    if pos_key in mapped and pos_key in own:
        mapped[pos_key] = _fit_pos_embed(mapped[pos_key], tuple(own[pos_key].shape), grid, num_prefix_tokens)
    for key, value in own.items():
        if key.startswith("ln_vision.") and key not in mapped:
            mapped[key] = value  # MiniGPT-v2 never saves its frozen ln_vision: γ = 1, β = 0
    return mapped


def _fit_pos_embed(value: torch.Tensor, shape: tuple[int, ...], grid: tuple[int, int],
                   num_prefix_tokens: int) -> torch.Tensor:
    """A square-grid position embedding of another size resized to `grid`; any other shape is left to the
    strict load, which names the clash."""
    side = math.isqrt(max(value.shape[1] - num_prefix_tokens, 0))
    if tuple(value.shape) == shape or side * side + num_prefix_tokens != value.shape[1]:
        return value
    print(f"note: EVA weights: position embedding {side}x{side} → {grid[0]}x{grid[1]} (bicubic, no antialias, "
          f"as upstream's interpolate_pos_embed)", file=sys.stderr)
    return resize_pos_embed(value, grid, num_prefix_tokens)
