"""Writing a folder from outside: built beside its final place, renamed into place on success."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError

__all__ = ["json_options", "new_folder", "new_run"]


@contextmanager
def new_folder(output: Path) -> Iterator[Path]:
    """Yield a scratch folder that becomes `output` on success. `output` must not exist, so nothing
    already written can be lost; a failure leaves nothing behind."""
    if output.exists():
        raise MmcoreError(f"{output}: already exists; choose a new directory (nothing was written)")
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def new_run(run: Path) -> Iterator[Path]:
    """`new_folder` for a run: once in place, it is assembled and gets its `assembly.lock` (base_dir
    must be the final folder); if that fails the run is removed."""
    with new_folder(run) as tmp:
        yield tmp
    try:
        from mmcore.assembly import assemble
        from mmcore.run import Run

        Run.create(run, assemble(run / "manifest.toml"), force=True)  # its weights are the import itself
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise


def json_options(flag: str, text: str | None, keys: str, example: str) -> dict[str, Any]:
    """A CLI flag's JSON object of component keys (`--sam-config '{"preset": "vit_b"}'`), or one line naming it."""
    try:
        options = json.loads(text) if text else {}
    except ValueError as err:
        raise MmcoreError(f"{flag}: not JSON ({err}); e.g. '{example}'") from None
    if not isinstance(options, dict):
        raise MmcoreError(f"{flag}: a JSON object of {keys} keys, e.g. '{example}'")
    return options
