"""What listing checkpoints costs: the sha256 of every checkpoint file (written into checkpoint.json at save,
checked again before a resume), in seconds per GB on 2 cores, next to the time to write the same bytes; what
it adds to a checkpoint of the tiny default (measured) and of a 7B LoRA run (estimated from the per-GB figure).

    .venv/bin/python benchmarks/checkpoint_hashing.py [--gb 1.0] [--cores 2]

Hashing reads the files just written (from the page cache, as at save time); a resume reads them from disk,
where the disk's read speed bounds it instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmcore.train._checkpoint import TrainState, commit_checkpoint, file_digests, write_checkpoint_files

GB = 1e9


def pin(cores: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    torch.set_num_threads(cores)


def _timed(work: Any, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_gb(folder: Path, gb: float, cores: int) -> tuple[float, float, float]:
    """(write s/GB, sha256 s/GB on `cores` threads, sha256 s/GB on one thread) over `gb` of safetensors."""
    from safetensors.torch import save_file

    parts = 4
    numel = int(gb * GB / 4 / parts)
    tensors = [torch.randn(numel) for _ in range(parts)]

    def write() -> None:
        for i, tensor in enumerate(tensors):
            path = folder / f"part{i}.safetensors"
            save_file({"w": tensor}, str(path))
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())

    write_s = _timed(write, repeats=2)
    size = sum(p.stat().st_size for p in folder.iterdir()) / GB
    hashed = _timed(lambda: file_digests(folder, threads=cores))
    single = _timed(lambda: file_digests(folder, threads=1))
    return write_s / size, hashed / size, single / size


def tiny_default(folder: Path, cores: int) -> tuple[float, float, float, int]:
    """(size GB, write s, sha256 s, trained parameters) of a real checkpoint of the tiny default's 'instruct'
    stage (encoders, projectors and LLM trained; AdamW state after one step)."""
    from importlib import resources

    from mmcore.assembly import assemble

    manifest = Path(str(resources.files("mmcore") / "defaults" / "tiny.toml"))
    model = assemble(manifest, device="cpu").model
    modules = model.components()
    params = [p for p in model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = TrainState(stage_index=1, stage="instruct", step=100, steps=2500,
                       trained={n: [k for k, _ in m.named_parameters()] for n, m in modules.items()})
    staging = folder / ".ckpt-1-0000100.tmp"
    staging.mkdir()
    start = time.perf_counter()
    write_checkpoint_files(staging, state, modules, optimizer, scheduler)
    write_s = time.perf_counter() - start
    size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) / GB
    hash_s = _timed(lambda: file_digests(staging, threads=cores))
    commit_checkpoint(folder, staging, state, "torch", keep=2)  # the real path end to end (listing + rename)
    return size, write_s, hash_s, sum(p.numel() for p in params)


def lora_7b_trained() -> int:
    """Parameters the 'instruct' stage of examples/llava-1.5-7b-lora.toml trains (LoRA r=128 + projector)."""
    from mmcore.assembly import assemble

    example = Path(__file__).resolve().parent.parent / "examples" / "llava-1.5-7b-lora.toml"
    return int(sum(assemble(example).trainable["instruct"].values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="bytes to write and hash for the per-GB figures")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    pin(args.cores)
    root = Path(tempfile.mkdtemp(prefix="ckpt-hashing-"))
    try:
        (root / "bulk").mkdir()
        write_gb, hash_gb, single_gb = per_gb(root / "bulk", args.gb, args.cores)
        shutil.rmtree(root / "bulk")
        print(f"{args.gb:.1f} GB of safetensors on {args.cores} cores: write + fsync {write_gb:.2f} s/GB; sha256 "
              f"{hash_gb:.2f} s/GB on {args.cores} threads ({single_gb:.2f} s/GB on one) = "
              f"{hash_gb / write_gb:.2f} × the write time")
        size, write_s, hash_s, params = tiny_default(root, args.cores)
        print(f"tiny default ('instruct', {params:,} parameters trained): checkpoint {size * 1e3:.1f} MB, written "
              f"in {write_s:.3f} s, hashed in {hash_s:.3f} s (+{100 * hash_s / write_s:.0f}% of the write)")
        trained = lora_7b_trained()
        per_param = size * GB / params  # weights + AdamW moments as this checkpoint stores them
        for label, bytes_per in (("torch engine", per_param), ("DeepSpeed, + fp32 master copy", per_param + 4)):
            gb = trained * bytes_per / GB
            print(f"7B LoRA ('instruct' of llava-1.5-7b-lora, {trained:,} parameters trained, {label}): ~{gb:.1f} GB "
                  f"per checkpoint → hashing adds ~{gb * hash_gb:.1f} s at save and again before a resume (writing "
                  f"it takes ~{gb * write_gb:.1f} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
