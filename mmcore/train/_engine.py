"""Engines: one process, torch DDP, or DeepSpeed ZeRO-2/3 — mmcore writes no distributed machinery.

Each engine runs a micro-batch forward/backward and an optimizer step with the stage's precision,
gradient clipping and accumulation.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mmcore.errors import MmcoreError
from mmcore.manifest import StageSpec
from mmcore.sequence import Batch

__all__ = ["Engine", "World", "init_world", "make_engine"]


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the process group that torchrun set up (gloo on CPU, NCCL on GPU), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(int(os.environ.get("RANK", "0")), size, device)


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.barrier()  # torch 2.13 CPU aborts at exit without it (environment.md §6)
        dist.destroy_process_group()


class Engine:
    """Single process, or DDP (`torch.nn.parallel.DistributedDataParallel`) when launched on several
    processes (`--nproc`); "single" and "ddp" stages both run data-parallel under torchrun."""

    is_deepspeed = False

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, stage: StageSpec, world: World,
                 accum: int) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.stage, self.world, self.accum = stage, world, accum
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.wrapped = model
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.wrapped = DistributedDataParallel(model, find_unused_parameters=True)

    def _autocast(self) -> Any:
        if self.stage.precision == "bf16":
            return torch.autocast(self.world.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def micro_step(self, batch: Batch | None, last: bool) -> float:
        """Forward + backward of one micro-batch (loss / accum); returns the unscaled loss."""
        sync = contextlib.nullcontext() if last or self.world.size == 1 else self.wrapped.no_sync()
        with sync:
            with self._autocast():
                if batch is None:  # every record skipped: keep collectives in step with zero gradients
                    loss = sum(p.sum() for p in self.params) * 0.0
                else:
                    loss = self.wrapped(batch.to(self.world.device)).loss
            (loss / self.accum).backward()
        return float(loss.detach())

    def step(self) -> None:
        if self.stage.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.stage.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def mean(self, value: float) -> float:
        if self.world.size == 1:
            return value
        tensor = torch.tensor([value], device=self.world.device)
        dist.all_reduce(tensor)
        return float(tensor) / self.world.size

    def gathered(self) -> Any:
        return contextlib.nullcontext()


def make_engine(model: Any, optimizer: Any, scheduler: Any, stage: StageSpec, world: World, accum: int) -> Any:
    if stage.engine.startswith("deepspeed"):
        from mmcore.train._deepspeed import DeepSpeedEngine

        return DeepSpeedEngine(model, optimizer, scheduler, stage, world, accum)
    if stage.engine not in ("single", "ddp"):
        raise MmcoreError(f"stage '{stage.name}': unknown engine '{stage.engine}'")
    return Engine(model, optimizer, scheduler, stage, world, accum)
