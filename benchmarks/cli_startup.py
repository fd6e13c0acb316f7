"""CLI start-up: median wall time of `mmcore --help` and `mmcore plugins` (5 runs each), and whether
torch was imported. Target: < 0.5 s each, torch absent.

    .venv/bin/python benchmarks/cli_startup.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

TARGET_S = 0.5
CHECK = """import sys, json
from mmcore.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps('torch' in sys.modules))
"""


def _time(args: list[str], runs: int = 5) -> float:
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mmcore", *args], capture_output=True, check=True)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def _torch_imported(argv: list[str]) -> bool:
    out = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, check=True)
    return bool(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    subprocess.run([sys.executable, "-m", "mmcore", "plugins"], capture_output=True, check=True)  # fill the cache
    for label, args in [("mmcore --help", ["--help"]), ("mmcore plugins", ["plugins"])]:
        median = _time(args)
        torch = _torch_imported(args)
        verdict = "OK" if median < TARGET_S and not torch else "MISSED"
        print(f"{label:16s} median {median:.3f} s  ratio to {TARGET_S} s target {median / TARGET_S:.2f}  "
              f"torch imported: {torch}  {verdict}")


if __name__ == "__main__":
    main()
