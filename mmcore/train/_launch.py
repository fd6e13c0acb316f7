"""`mmcore train RUN --nproc N [--nnodes M --node-rank R --master-addr A]`: start the ranks with torchrun's
own launcher (torch.distributed.run, in this process) and report a failure as one line.

Each rank hands its one-line error to the launcher through torchelastic's error file; when a rank dies
without one (killed, crashed), the launcher names it. torchrun then stops the other ranks, so a dead or
hung rank (see MMCORE_DIST_TIMEOUT) never leaves the rest waiting.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError

__all__ = ["Nodes", "launch", "root_cause"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Nodes:
    """Where this launcher's ranks sit: `nnodes` machines, this one `node_rank`, rendezvous at addr:port."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    def check(self) -> None:
        if not 0 <= self.node_rank < self.nnodes:
            raise MmcoreError(f"--node-rank {self.node_rank}: must be 0 … {self.nnodes - 1} for --nnodes {self.nnodes}")
        if self.nnodes > 1 and not self.master_addr:
            raise MmcoreError(f"--nnodes {self.nnodes}: pass --master-addr, the address of the machine with "
                              f"--node-rank 0 (the same on every machine)")
        if self.nnodes > 1 and not self.master_port:
            raise MmcoreError(f"--nnodes {self.nnodes}: pass --master-port, a free port on the --node-rank 0 machine "
                              f"(the same on every machine)")


def _torchrun_args(run: Path, nproc: int, nodes: Nodes) -> list[str]:
    port = nodes.master_port or _free_port()
    return [f"--nnodes={nodes.nnodes}", f"--node_rank={nodes.node_rank}", f"--nproc_per_node={nproc}",
            f"--master_addr={nodes.master_addr or '127.0.0.1'}", f"--master_port={port}",
            "--module", "mmcore", "train", str(run)]


def _quiet_torchelastic() -> None:
    """torchrun's agent logs every failure as a block; the launcher prints one line instead."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _mmcore_error(failure: Any) -> dict[str, Any] | None:
    data = failure.error_file_data if isinstance(getattr(failure, "error_file_data", None), dict) else {}
    return data if isinstance(data.get("mmcore"), dict) and isinstance(data.get("message"), str) else None


def root_cause(failures: dict[int, Any], run: Path) -> str | None:
    """One line for the ranks that failed (rank → torchelastic ProcessFailure), or None when a rank already
    printed its own. A rank's own error wins; then a rank that died without one (killed, crashed), which the
    others only saw as lost contact; then the first lost contact."""
    errors = {rank: data for rank, f in failures.items() if (data := _mmcore_error(f)) is not None}
    own = sorted((f.timestamp, rank) for rank, f in failures.items()
                 if rank in errors and not errors[rank]["mmcore"].get("lost_contact"))
    if own:
        return str(errors[own[0][1]]["message"])
    # torchrun stops the surviving ranks with SIGTERM and records them too, stamped to the same second as the
    # rank that died first: a SIGTERM'd rank is the cause only when nothing else died.
    died = sorted((f.exitcode == -signal.SIGTERM, f.timestamp, rank) for rank, f in failures.items()
                  if rank not in errors and f.exitcode != 2)
    lost = sorted((f.timestamp, rank) for rank, f in failures.items() if rank in errors)
    if died:
        rank = died[0][2]
        failure = failures[rank]
        how = (f"ended by {signal.Signals(-failure.exitcode).name}" if failure.exitcode < 0
               else f"exit code {failure.exitcode}, its output above")
        seen = (f"; rank {lost[0][1]} lost contact with it ({errors[lost[0][1]]['mmcore']['lost_contact']})"
                if lost else "")
        return (f"rank {rank} (pid {failure.pid}) died or stopped answering ({how}){seen}; the other ranks were "
                f"stopped — `mmcore train {run}` resumes from the last checkpoint")
    if lost:
        return str(errors[lost[0][1]]["message"])
    return None


def launch(run: Path, nproc: int, nodes: Nodes | None = None) -> int:
    """Run `python -m mmcore train RUN` on `nproc` ranks of this machine (of `nodes.nnodes`); returns 0, or 2
    after printing the failure's one line."""
    from mmcore.run._pidlock import HELD_ENV

    nodes = nodes or Nodes()
    nodes.check()
    saved = dict(os.environ)
    os.environ[HELD_ENV] = "1"  # the ranks run under this launcher's trainer lock and report through it
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default per rank, without its banner
    try:
        return _launch(run, nproc, nodes)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _launch(run: Path, nproc: int, nodes: Nodes) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    config, command, args = config_from_args(parse_args(_torchrun_args(run, nproc, nodes)))
    _quiet_torchelastic()
    try:
        elastic_launch(config, command)(*args)
    except ChildFailedError as failed:
        line = root_cause(failed.failures, run)
        if line:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except SignalException as stopped:  # Ctrl-C or a kill of the launcher: torchrun has stopped the ranks
        print(f"interrupted ({signal.Signals(stopped.sigval).name}); `mmcore train {run}` resumes from the last "
              f"checkpoint", file=sys.stderr)
        return 130
    return 0

