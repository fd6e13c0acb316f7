"""`mmcore assemble examples/llava-1.5-7b.toml --dry-run`: wall time, peak RSS, and the printed counts
against the real model's. Targets: < 10 s, < 2 GB; CLIP ViT-L/14-336 303,507,456; mlp2x_gelu
20,979,712; Vicuna-7B-v1.5 6,738,415,616; total 7,062,902,784.

    .venv/bin/python benchmarks/assemble_7b.py [examples/llava-1.5-7b.toml]
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

EXPECTED = {"encoders.vision": 303_507_456, "projectors.vision": 20_979_712, "llm": 6_738_415_616,
            "total": 7_062_902_784}


def main() -> None:
    manifest = sys.argv[1] if len(sys.argv) > 1 else "examples/llava-1.5-7b.toml"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmcore", "assemble", manifest, "--dry-run"],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB → GiB
    print(done.stdout)
    counts = {}
    for line in done.stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in EXPECTED:
            counts[cells[0]] = int(next(c for c in cells[1:] if c.replace(",", "").isdigit()).replace(",", ""))
    print(f"wall {wall:.2f} s (target 10 s, ratio {wall / 10:.2f})   peak RSS {peak_gb:.2f} GiB "
          f"(target 2 GB, ratio {peak_gb * 1.0737 / 2:.2f})")
    if "7b" in manifest:
        for name, expected in EXPECTED.items():
            got = counts.get(name)
            print(f"{name:18s} printed {got:>15,}  real {expected:>15,}  {'exact' if got == expected else 'MISMATCH'}")


if __name__ == "__main__":
    main()
