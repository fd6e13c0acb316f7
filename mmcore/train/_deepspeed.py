"""DeepSpeed ZeRO-2/3 engine: the DeepSpeed config is generated from the stage.

On CPU DeepSpeed talks gloo and JIT-compiles its shared-memory op on first use (set
TORCH_EXTENSIONS_DIR to cache it); our own torch AdamW and LambdaLR are handed to it as client
optimizer and scheduler, so per-component learning rates are the same under every engine.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from mmcore.manifest import StageSpec
from mmcore.sequence import Batch

__all__ = ["DeepSpeedEngine", "deepspeed_config"]


def deepspeed_config(stage: StageSpec, batch: int, accum: int, world: int,
                     keep_fp32: bool = False) -> dict[str, Any]:
    """LLaVA's scripts/zero2.json / zero3.json with the stage's numbers filled in. `keep_fp32`: a
    component's dtype policy forbids DeepSpeed's bf16 weight cast; bf16 then comes from torch autocast
    (Honeybee's AbstractorTypeConvertCallback re-cast its D-Abstractor to fp32 every step instead)."""
    zero: dict[str, Any] = {"stage": 3 if stage.engine.endswith("3") else 2, "overlap_comm": False,
                            "contiguous_gradients": True, "sub_group_size": int(1e9)}
    if zero["stage"] == 3:
        zero.update(stage3_max_live_parameters=int(1e9), stage3_max_reuse_distance=int(1e9),
                    stage3_gather_16bit_weights_on_model_save=True)
    return {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": accum,
        "train_batch_size": batch * accum * world,
        "gradient_clipping": stage.grad_clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": stage.precision == "bf16" and not keep_fp32},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _single_process_env() -> None:
    """DeepSpeed without a launcher falls into MPI discovery; give it a world of one instead."""
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        from mmcore.train._launch import _free_port

        os.environ["MASTER_PORT"] = str(_free_port())


class DeepSpeedEngine:
    """`deepspeed.initialize` over the model with our optimizer and schedule."""

    is_deepspeed = True

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, stage: StageSpec, world: Any, accum: int) -> None:
        _single_process_env()
        import deepspeed

        self.stage, self.world, self.accum = stage, world, accum
        self.model = model
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.keep_fp32 = any(getattr(m, "compute_dtype", None) is not None for m in model.modules())
        config = deepspeed_config(stage, stage.batch_size, accum, world.size, self.keep_fp32)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        self.zero3 = config["zero_optimization"]["stage"] == 3

    def micro_step(self, batch: Batch | None, last: bool, check: Any = None) -> tuple[float, bool]:
        """Forward, then backward unless `check` drops the loss (zero gradients instead), then DeepSpeed's
        step, which updates only at the accumulation boundary."""
        loss = None
        if batch is not None:
            autocast = self.keep_fp32 and self.stage.precision == "bf16"
            with torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = self.ds(batch.to(self.world.device)).loss
        value = 0.0 if loss is None else float(loss.detach().float())
        kept = (check is None or check(value)) and loss is not None  # every rank joins the check
        if not kept:
            loss = sum((p.sum() for p in self.params), torch.zeros(())) * 0.0
        self.ds.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        self.ds.step()  # an optimizer step only at the accumulation boundary
        return value, kept

    def grad_norm(self) -> float | None:
        """Unknown before DeepSpeed's own step (weights are checked to be finite before every save)."""
        return None

    def step(self, update: bool = True) -> None:
        """Nothing: DeepSpeed stepped at the boundary inside `micro_step` (a dropped batch gave zero gradients)."""

    def mean(self, value: float) -> float:
        from mmcore.train._engine import all_sum

        return all_sum([value], self.world)[0] / self.world.size

    def gathered(self) -> Any:
        """Full parameters on every rank while saving (ZeRO-3 partitions them)."""
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)

    def save_state(self, folder: Path, tag: str) -> None:
        """Optimizer partitions of every rank into the checkpoint's staging folder (collective); frozen
        parameters are left out (the checkpoint's own safetensors hold the trained ones)."""
        self.ds.save_checkpoint(str(folder), tag=tag, save_latest=False, exclude_frozen_parameters=True)

    def load_state(self, folder: Path, tag: str) -> None:
        self.ds.load_checkpoint(str(folder), tag=tag, load_module_strict=False, load_optimizer_states=True,
                                load_lr_scheduler_states=True)
