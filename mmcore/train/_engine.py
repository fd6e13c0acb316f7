"""Engines: one process, torch DDP, or DeepSpeed ZeRO-2/3 — mmcore writes no distributed machinery.

Each engine runs a micro-batch forward/backward and an optimizer step with the stage's precision,
gradient clipping and accumulation. Between forward and backward the trainer sees the loss: a
non-finite one is never back-propagated (the micro-batch contributes zero gradients instead).

The world comes from the launcher's environment: torchrun (`mmcore train --nproc/--nnodes`, or an
external `torchrun … -m mmcore train RUN`), the `deepspeed` launcher, or SLURM's `srun` (one task per
device; SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID with MASTER_ADDR and MASTER_PORT set by the job).
Ranks take every decision together (`agree`, `shared`): an error on one rank stops all of them, and a rank
that fails hands its one line to the launcher (`stop_rank`), never leaving the others waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mmcore.errors import MmcoreError
from mmcore.manifest import StageSpec
from mmcore.sequence import Batch

__all__ = ["DIST_TIMEOUT_ENV", "Engine", "RankStopped", "World", "agree", "all_sum", "close_world", "init_world",
           "is_comm_error", "lost_contact", "make_engine", "shared", "slurm_env", "stop_rank"]

DIST_TIMEOUT_ENV = "MMCORE_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks (default 1800)


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def slurm_env(environ: dict[str, str]) -> dict[str, str]:
    """RANK / WORLD_SIZE / LOCAL_RANK for a job started by `srun` with one task per device (no torchrun)."""
    if "RANK" in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in environ]
    if missing:
        raise MmcoreError(f"srun started {environ['SLURM_NTASKS']} tasks but {', '.join(missing)} is not set; export "
                          f"MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1) and MASTER_PORT "
                          f"in the job script (README: Training on several machines)")
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ["SLURM_NTASKS"],
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0")}


def _timeout() -> timedelta:
    raw = os.environ.get(DIST_TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        raise MmcoreError(f"{DIST_TIMEOUT_ENV}={raw}: not a number of seconds") from None
    return timedelta(seconds=seconds)


def _die_with_launcher() -> None:
    """A rank of `mmcore train --nproc/--nnodes` stops when its launcher is killed (Linux), never training on."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def init_world() -> World:
    """Join the process group the launcher set up (gloo on CPU, NCCL on GPU), or a world of one. Every
    collective gives up after MMCORE_DIST_TIMEOUT seconds, so a rank that hangs never hangs the others."""
    from mmcore.run._pidlock import HELD_ENV

    os.environ.update(slurm_env(dict(os.environ)))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    if size > 1 and not dist.is_initialized():
        if os.environ.get(HELD_ENV):
            _die_with_launcher()
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=_timeout(),
                                rank=int(os.environ["RANK"]), world_size=size)
    return World(int(os.environ.get("RANK", "0")), size, device)


def close_world(world: World, ok: bool = True) -> None:
    """Leave the process group; after a failure without the final barrier (a peer may be gone)."""
    if world.size > 1 and dist.is_initialized():
        if ok:
            dist.barrier()  # torch 2.13 CPU aborts at exit without it (environment.md §6)
        dist.destroy_process_group()


def is_comm_error(err: BaseException) -> bool:
    """A collective failed: a peer died (connection reset/closed) or did not answer within the timeout."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        mark in text for mark in ("gloo", "Connection reset", "Connection closed", "Timed out", "NCCL", "Broken pipe"))


def all_sum(values: list[float], world: World) -> list[float]:
    """`values` summed over the ranks (one collective); the values themselves on a world of one."""
    if world.size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


class RankStopped(MmcoreError):
    """Raised on the other ranks when an error that one rank reports stops a distributed run."""


T = TypeVar("T")


def agree(world: World, work: Callable[[], T], main_only: bool = False) -> T | None:
    """Run `work` (on the main rank only when `main_only`); if it fails on any rank every rank stops: the
    failing ranks with their error, the others with `RankStopped`. A world of one just runs it."""
    if world.size == 1:
        return work()
    result, error = None, None
    try:
        if world.is_main or not main_only:
            result = work()
    except MmcoreError as err:
        error = err
    if all_sum([0.0 if error is None else 1.0], world)[0]:
        raise error or RankStopped("another rank failed")
    return result


def shared(world: World, work: Callable[[], T]) -> T:
    """`work`'s result computed on the main rank and sent to every rank (or its error, raised everywhere)."""
    if world.size == 1:
        return work()
    box: list[Any] = [None]
    if world.is_main:
        try:
            box = [("ok", work())]
        except MmcoreError as err:
            box = [("error", str(err))]
    torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise MmcoreError(value) if world.is_main else RankStopped(value)
    return value  # type: ignore[no-any-return]


def lost_contact(err: BaseException) -> str:
    """The collective's own reason, without gloo's source location and advice."""
    import re

    reason = re.sub(r"^\[[^\]]*\]\s*", "", (str(err).strip().splitlines() or [type(err).__name__])[0])
    return reason.split(". This is typically")[0].rstrip(".")


def stop_rank(world: World, message: str, lost: str | None = None) -> None:
    """A rank of a distributed run that fails: under `mmcore train --nproc/--nnodes` it hands its one line to
    the launcher (torchelastic's error file), which prints the root cause once; otherwise it prints it."""
    from mmcore.run._pidlock import HELD_ENV

    line = f"rank {world.rank} of {world.size}: {message}"
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if os.environ.get(HELD_ENV) and error_file:
        with contextlib.suppress(OSError):
            Path(error_file).write_text(json.dumps({"message": line, "timestamp": int(time.time()),
                                                    "mmcore": {"lost_contact": lost}}))
        raise SystemExit(2)
    raise MmcoreError(line)


Check = Callable[[float], bool]  # the micro-batch's loss → back-propagate it (True) or drop it (False)


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

    def _zero_loss(self) -> torch.Tensor:
        """A loss whose gradients are zero: keeps every rank's collectives in step."""
        return sum((p.sum() for p in self.params), torch.zeros((), device=self.world.device)) * 0.0

    def micro_step(self, batch: Batch | None, last: bool, check: Check | None = None) -> tuple[float, bool]:
        """Forward + backward of one micro-batch (loss / accum); returns (the unscaled loss, whether it was
        back-propagated)."""
        sync = contextlib.nullcontext() if last or self.world.size == 1 else self.wrapped.no_sync()
        with sync:
            with self._autocast():
                loss = self._zero_loss() if batch is None else self.wrapped(batch.to(self.world.device)).loss
            value = float(loss.detach())
            kept = (check is None or check(value)) and batch is not None  # every rank joins the check
            if not kept:
                loss = self._zero_loss()
            (loss / self.accum).backward()
        return value, kept

    def grad_norm(self) -> float | None:
        """The gradient norm before clipping (clipping to `grad_clip` when set)."""
        if self.stage.grad_clip:
            return float(torch.nn.utils.clip_grad_norm_(self.params, self.stage.grad_clip))
        grads = [p.grad for p in self.params if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def step(self, update: bool = True) -> None:
        """The optimizer step (skipped when `update` is False: the batch contributed nothing usable)."""
        if update:
            self.optimizer.step()
        with warnings.catch_warnings():  # a skipped first step: torch warns that the schedule ran first
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def mean(self, value: float) -> float:
        return all_sum([value], self.world)[0] / self.world.size

    def gathered(self) -> Any:
        return contextlib.nullcontext()


def make_engine(model: Any, optimizer: Any, scheduler: Any, stage: StageSpec, world: World, accum: int) -> Any:
    if stage.engine.startswith("deepspeed"):
        from mmcore.train._deepspeed import DeepSpeedEngine

        return DeepSpeedEngine(model, optimizer, scheduler, stage, world, accum)
    if stage.engine not in ("single", "ddp"):
        raise MmcoreError(f"stage '{stage.name}': unknown engine '{stage.engine}'")
    return Engine(model, optimizer, scheduler, stage, world, accum)
