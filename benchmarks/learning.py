"""Does the embedded default learn? Held-out VQA accuracy on colour and shape questions before and after
the default run (examples/tiny.toml), and the training time. Targets: accuracy >= 0.8 (chance <= 0.2)
after under 10 minutes of training on 2 CPU cores.

    .venv/bin/python benchmarks/learning.py [MANIFEST] [RUN_DIR]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGET_ACCURACY = 0.8
TARGET_MINUTES = 10.0


def _accuracy(run: Path) -> dict[str, float]:
    """Colour, shape and combined accuracy from RUN/eval/*/answers.jsonl."""
    records = [json.loads(line) for path in (run / "eval").glob("*/answers.jsonl")
               for line in path.read_text().splitlines()]
    out = {}
    groups = {"colour": {"vqa/colour"}, "shape": {"vqa/shape"}, "colour+shape": {"vqa/colour", "vqa/shape"}}
    for name, tasks in groups.items():
        scores = [r["score"] for r in records if r["task"] in tasks]
        out[name] = sum(scores) / len(scores) if scores else float("nan")
    return out


def _mmcore(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mmcore", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    manifest = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/tiny.toml")
    run = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/learning")
    shutil.rmtree(run, ignore_errors=True)
    _mmcore("assemble", str(manifest), "-o", str(run))
    _mmcore("eval", str(run))  # no weights yet: the random-initialised model
    before = _accuracy(run)
    shutil.rmtree(run / "eval")
    start = time.perf_counter()
    _mmcore("train", str(run))  # trains, then evaluates the [eval] datasets
    minutes = (time.perf_counter() - start) / 60
    after = _accuracy(run)
    print(f"{'held-out accuracy':20s} {'untrained':>10s} {'trained':>10s} {'trained / 0.8':>14s}")
    for key in before:
        print(f"{key:20s} {before[key]:10.3f} {after[key]:10.3f} {after[key] / TARGET_ACCURACY:14.2f}")
    ratio = minutes / TARGET_MINUTES
    print(f"train + final eval: {minutes:.1f} min (target {TARGET_MINUTES:.0f} min, ratio {ratio:.2f})")
    ok = after["colour+shape"] >= TARGET_ACCURACY and minutes <= TARGET_MINUTES
    print("OK" if ok else "MISSED")


if __name__ == "__main__":
    main()
