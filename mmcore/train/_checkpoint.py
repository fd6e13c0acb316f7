"""Training checkpoints that are never silently wrong.

    RUN/checkpoints/ckpt-<stage index>-<step>/
        weights/<component>.safetensors   the trained parameters
        optimizer.pt                      torch optimizer + scheduler (single / DDP engines)
        deepspeed/<name>/…                DeepSpeed's optimizer partitions (DeepSpeed engines)
        rng.pt, state.json                the RNG and the `TrainState`
        checkpoint.json                   every file above with its size and sha256, the stage and step (last)
    RUN/checkpoints/latest                the newest checkpoint's name, for people

A checkpoint is written into `.ckpt-….tmp`, listed, then renamed into place, so a kill at any moment leaves
the last good one; staging folders a killed process left behind are removed when training starts. Before a
resume every file is checked against the listing; a damaged newest checkpoint falls back to the one before
(a one-line warning names the file; the damaged one is moved aside, never deleted), and when none is good
the run stops with one line — it never starts from fresh weights or a fresh optimizer in silence.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmcore.errors import MmcoreError

__all__ = ["LISTING", "TrainState", "checkpoint_name", "clear_staging", "commit_checkpoint", "file_digests",
           "listing_of", "load_checkpoint", "read_state", "save_checkpoint", "select_checkpoint", "staging_folder",
           "verify_checkpoint", "write_checkpoint_files", "writing_checkpoint"]

LISTING = "checkpoint.json"
FORMAT = 1


@dataclass
class TrainState:
    """Where training stands: the next step of `stage_index` and what has been trained so far."""

    stage_index: int = 0
    stage: str = ""  # the name of the stage at `stage_index` while it runs
    step: int = 0  # the next optimizer step to run in this stage
    steps: int = 0  # optimizer steps in this stage
    # stage name → {"steps", "max_steps", "epochs"} of every finished stage, in the order they ran
    completed: dict[str, dict[str, Any]] = field(default_factory=dict)
    trained: dict[str, list[str]] = field(default_factory=dict)  # component → parameter names ever trained
    lora: dict[str, Any] | None = None  # the LoRA applied to the LLM, re-applied on resume
    skipped: dict[str, int] = field(default_factory=dict)


def checkpoint_name(state: TrainState) -> str:
    return f"ckpt-{state.stage_index}-{state.step:07d}"


def staging_folder(root: Path, name: str) -> Path:
    """Where checkpoint `name` is written before it is renamed into place (the same on every rank)."""
    return root / f".{name}.tmp"


def clear_staging(root: Path) -> list[Path]:
    """Remove the half-written staging folders (and pointer files) a killed or failed process left."""
    removed = []
    for path in sorted(root.glob(".ckpt-*.tmp*")) + sorted(root.glob(".latest.tmp*")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# --- hashing -------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)  # releases the GIL: files hash in parallel threads
    return digest.hexdigest()


def file_digests(folder: Path, threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Relative path → {size, sha256} of every file under `folder` (hashed on several threads)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != LISTING)
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = list(pool.map(_sha256, files))
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": d}
            for p, d in zip(files, digests, strict=True)}


# --- writing -------------------------------------------------------------------------------------------
def _disk_reason(err: BaseException, folder: Path) -> str:
    """Why a write failed, for people: the errno text, else the library's first line plus the free space."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return os.strerror(err.errno)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    code = re.search(r"\(os error (\d+)\)", first)  # safetensors (Rust) keeps the errno this way
    if code:
        return os.strerror(int(code.group(1)))
    try:
        free = shutil.disk_usage(folder.parent).free / 2**20
        return f"{first[:120]}; {free:.0f} MiB free on its disk"
    except OSError:
        return first[:120]


@contextmanager
def writing_checkpoint(root: Path, folder: Path) -> Iterator[None]:
    """Turn a failed write (full disk, a file-size limit, I/O error) into one line; the staging folder goes."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        name = folder.name.removeprefix(".").removesuffix(".tmp")
        pointer = root / "latest"
        last = pointer.read_text().strip() if pointer.is_file() else None
        kept = f"the last good checkpoint {root / last} is intact" if last else "no earlier checkpoint exists"
        raise MmcoreError(f"checkpoint {root / name}: could not be written ({_disk_reason(err, folder)}); the "
                          f"half-written folder was removed and {kept} — free disk space, then `mmcore train "
                          f"{root.parent}` resumes") from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_checkpoint_files(folder: Path, state: TrainState, modules: dict[str, torch.nn.Module],
                           optimizer: Any = None, scheduler: Any = None) -> None:
    """Trained parameters, torch optimizer + scheduler, RNG and `state` into the staging `folder`."""
    from safetensors.torch import save_file

    (folder / "weights").mkdir(parents=True, exist_ok=True)
    for name, names in state.trained.items():
        wanted = set(names)
        params = {k: v.detach().contiguous().cpu() for k, v in modules[name].state_dict().items() if k in wanted}
        save_file(params, str(folder / "weights" / f"{name}.safetensors"))
    if optimizer is not None:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, folder / "rng.pt")
    (folder / "state.json").write_text(json.dumps(asdict(state), indent=1))


def _serial(folder: Path) -> int:
    try:
        return int(json.loads((folder / LISTING).read_text())["serial"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def commit_checkpoint(root: Path, folder: Path, state: TrainState, optimizer: str | None, keep: int) -> Path:
    """List the staging `folder` (sizes, sha256), rename it into place, point `latest` at it, prune."""
    name = checkpoint_name(state)
    serial = 1 + max([_serial(p) for p in root.glob("ckpt-*")] + [0])
    listing = {"format": FORMAT, "serial": serial, "stage_index": state.stage_index, "stage": state.stage,
               "step": state.step, "steps": state.steps, "optimizer": optimizer, "files": file_digests(folder)}
    (folder / LISTING).write_text(json.dumps(listing, indent=1))
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    final = root / name
    if final.exists():  # the same step written again (after a fallback): the new one replaces it
        shutil.rmtree(final)
    os.replace(folder, final)
    pointer = root / f".latest.tmp{os.getpid()}"
    pointer.write_text(name)
    os.replace(pointer, root / "latest")
    ordered = sorted((p for p in root.glob("ckpt-*") if p.is_dir()), key=_serial)
    for old in ordered[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(root: Path, state: TrainState, modules: dict[str, torch.nn.Module],
                    optimizer: Any = None, scheduler: Any = None, keep: int = 2) -> Path:
    """One process: stage, write, list and commit a checkpoint; returns its folder."""
    root.mkdir(parents=True, exist_ok=True)
    folder = staging_folder(root, checkpoint_name(state))
    shutil.rmtree(folder, ignore_errors=True)
    with writing_checkpoint(root, folder):
        folder.mkdir()
        write_checkpoint_files(folder, state, modules, optimizer, scheduler)
        return commit_checkpoint(root, folder, state, "torch" if optimizer is not None else None, keep)


# --- verifying and choosing ----------------------------------------------------------------------------
def listing_of(folder: Path) -> dict[str, Any]:
    """The checkpoint's listing (checked by `verify_checkpoint` first)."""
    return dict(json.loads((folder / LISTING).read_text()))


def _read_listing(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = folder / LISTING
    if not path.is_file():
        return None, f"{path} is missing (an incomplete checkpoint, or one written before checkpoints were listed)"
    try:
        listing = json.loads(path.read_text())
        files = listing["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a table")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"{path} cannot be read ({err})"
    return listing, None


def _state_problem(folder: Path, listing: dict[str, Any]) -> str | None:
    """The state must agree with its listing and stay inside its stage."""
    path = folder / "state.json"
    try:
        state = read_state(folder)
    except MmcoreError as err:
        return str(err)
    if (state.stage_index, state.step) != (listing.get("stage_index"), listing.get("step")):
        return f"{path} says stage {state.stage_index} step {state.step}, its listing another"
    if not 0 <= state.step <= state.steps:
        return f"{path} says step {state.step} of a {state.steps}-step stage"
    missing = [f"weights/{n}.safetensors" for n in state.trained if f"weights/{n}.safetensors" not in listing["files"]]
    if missing or "rng.pt" not in listing["files"]:
        return f"{folder / (missing or ['rng.pt'])[0]} is not in its listing"
    return None


def verify_checkpoint(folder: Path) -> str | None:
    """None when every listed file is there with its size and sha256, else what is wrong (naming the file)."""
    listing, problem = _read_listing(folder)
    if listing is None:
        return problem
    files: dict[str, dict[str, Any]] = listing["files"]
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != LISTING}
    for rel, info in sorted(files.items()):
        path = folder / rel
        if rel not in present:
            return f"{path} is missing"
        if path.stat().st_size != info.get("size"):
            return f"{path} has {path.stat().st_size} bytes, {info.get('size')} when written (truncated or replaced)"
    unlisted = sorted(present - set(files))
    if unlisted:
        return f"{folder / unlisted[0]} was added after the checkpoint was written"
    actual = file_digests(folder)
    changed = next((rel for rel, info in sorted(files.items()) if actual[rel]["sha256"] != info.get("sha256")), None)
    if changed is not None:
        return f"{folder / changed} does not match its sha256 (changed after it was written)"
    return _state_problem(folder, listing)


def _aside(folder: Path) -> Path:
    """Move a damaged checkpoint out of the way (kept for inspection, never chosen again)."""
    target = folder.with_name(f"damaged-{folder.name}")
    index = 1
    while target.exists():
        index += 1
        target = folder.with_name(f"damaged{index}-{folder.name}")
    os.replace(folder, target)
    return target


def select_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that verifies (None when training never saved one). A damaged newer one is moved
    aside with a one-line warning naming the file; none good is a one-line error."""
    folders = sorted((p for p in root.glob("ckpt-*") if p.is_dir()), key=lambda p: (_serial(p), p.stat().st_mtime))
    if not folders:
        pointer = root / "latest"
        if pointer.is_file():
            raise MmcoreError(f"{pointer} names {pointer.read_text().strip()}, but no checkpoint is left in {root}; "
                              f"restore it, or move {root} away to train from the start")
        return None
    damaged: list[tuple[Path, str]] = []
    for folder in reversed(folders):
        problem = verify_checkpoint(folder)
        if problem is None:
            for bad, reason in damaged:
                moved = _aside(bad)
                print(f"warning: {reason}; resuming from the checkpoint before it, {folder.name} (the damaged one "
                      f"is kept as {moved.name})", file=sys.stderr)
            return folder
        damaged.append((folder, problem))
    reasons = "; ".join(reason for _, reason in damaged)
    raise MmcoreError(f"{root}: no checkpoint can be trusted ({reasons}); restore them from a copy, or move {root} "
                      f"away to train from the start — nothing was changed")


# --- reading -------------------------------------------------------------------------------------------
def read_state(folder: Path) -> TrainState:
    try:
        return TrainState(**json.loads((folder / "state.json").read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise MmcoreError(f"{folder}/state.json cannot be read ({err}); move {folder} away to resume from the "
                          f"checkpoint before it") from None


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer: Any = None,
                    scheduler: Any = None) -> None:
    """Load trained weights (and optimizer, scheduler, RNG when given) from a verified `folder`."""
    from safetensors.torch import load_file

    for rel in sorted(listing_of(folder)["files"]):
        if not (rel.startswith("weights/") and rel.endswith(".safetensors")):
            continue
        file = folder / rel
        module = modules.get(file.stem)
        if module is None:
            raise MmcoreError(f"checkpoint {file}: no component '{file.stem}' in this manifest; was the run "
                              f"re-assembled with another model? Train it in a new run directory")
        state = load_file(str(file))
        own = module.state_dict()
        clash = next((f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                      if k in own and tuple(v.shape) != tuple(own[k].shape)), None)
        if clash:
            raise MmcoreError(f"checkpoint {file}: component '{file.stem}' no longer fits it ({clash}, checkpoint vs "
                              f"manifest); the model changed since it was trained — train it in a new run directory")
        unexpected = module.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise MmcoreError(f"checkpoint {file}: keys {unexpected[:3]} do not belong to '{file.stem}'")
    if optimizer is not None and (folder / "optimizer.pt").exists():
        saved = torch.load(folder / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(torch.load(folder / "rng.pt", weights_only=True)["torch"])
