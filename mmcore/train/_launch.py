"""`mmcore train RUN --nproc N`: start N ranks with torchrun (torch.distributed.run)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["launch"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(run: Path, nproc: int) -> int:
    """Run `python -m mmcore train RUN` on `nproc` local ranks; returns the launcher's exit code."""
    import os

    from mmcore.run._pidlock import HELD_ENV

    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", "--master_addr=127.0.0.1", "-m", "mmcore", "train", str(run)]
    return subprocess.run(command, env={**os.environ, HELD_ENV: "1"}).returncode  # the ranks run under our lock
