"""One trainer at a time: `RUN/train.pid` holds the pid and host of the process training the run.

Taken with O_EXCL; a lock whose process is gone (killed, crashed) is taken over with a note, so a kill -9
never leaves a run locked. Ranks launched by `mmcore train --nproc N` run under their parent's lock.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmcore.errors import MmcoreError

__all__ = ["HELD_ENV", "trainer_lock"]

HELD_ENV = "MMCORE_TRAIN_LOCK_HELD"  # set by the launcher for its ranks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _holder(path: Path) -> tuple[int, str] | None:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None  # half-written or unreadable: treat as stale


@contextmanager
def trainer_lock(run: Path) -> Iterator[None]:
    """Hold `run/train.pid` for the duration; a live holder is a one-line error naming its pid."""
    if os.environ.get(HELD_ENV) or int(os.environ.get("RANK", "0")) > 0:
        yield  # a rank of `--nproc N` (the launcher holds the lock) or a rank > 0 (rank 0 holds it)
        return
    path = run / "train.pid"
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and holder[1] != socket.gethostname():
                raise MmcoreError(f"{run}: `mmcore train` (pid {holder[0]}) on host {holder[1]} holds {path}; if it is "
                                  f"no longer running there, delete {path}") from None
            if holder is not None and _alive(holder[0]):
                raise MmcoreError(f"{run}: another `mmcore train` (pid {holder[0]}) is training this run; wait for it "
                                  f"or stop it (kill {holder[0]})") from None
            print(f"note: {path} was left by a process that is gone (pid {holder[0] if holder else '?'}); "
                  f"taking it over", file=sys.stderr)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    else:
        raise MmcoreError(f"{run}: could not take {path}; another trainer keeps taking it")
    try:
        yield
    finally:
        if path.exists() and path.read_text().strip() == me:
            path.unlink()
