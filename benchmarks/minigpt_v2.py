"""The tiny MiniGPT-v2 (examples/minigpt-v2-tiny.toml, issue 12): what it learns in ≤ 10 minutes on 2 cores.

Held-out scenes (synthetic-shapes `test` split, 1-2 shapes, never trained on), asked with MiniGPT-v2's
instruction pools, greedy answers through `mmcore.eval.evaluate` (the code `mmcore eval` runs), untrained vs after
`mmcore train` (its three stages):

* REC Prec@0.5: "[refer] where is {shape} ?" (…) → {<x1><y1><x2><y2>}, scored as eval_ref.py scores it (its
  regex; an answer it would not parse is a miss, and counted; +1 pixel areas; IoU > 0.5);
* identify accuracy: "[identify] what object is in this location {<..>}" (…) → the shape's name, exact match.

Training wall time and the machine's load (other work on the same cores slows it) are printed with the figures.

    .venv/bin/python benchmarks/minigpt_v2.py [--scenes 100] [--steps-scale 1.0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def scores(pipeline: Any, scenes: int, codec: Any) -> dict[str, Any]:
    """REC Prec@0.5 (eval_ref.py) with its parse failures, and identify accuracy, on held-out scenes."""
    from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
    from mmcore.eval import evaluate, summarize
    from mmcore.kinds import BuildContext

    out: dict[str, Any] = {}
    for task in ("refer", "identify"):
        config = ShapesConfig(split="test", size=scenes, max_shapes=2, tasks=[task], box_format="minigpt",
                              instructions="minigpt-v2")
        dataset = SyntheticShapes(config, BuildContext(name="test"))
        records = evaluate(pipeline, dataset, "llama2", codec, batch_size=25, max_new_tokens=24)
        summary = summarize(records)
        out[task] = summary[task]
        if task == "refer":
            out["refer_unparsed"] = summary["refer_unparsed"]
            out["example"] = f"{records[0].question!r} → {records[0].answer!r} (reference {records[0].reference!r})"
    return out


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's max_steps")
    parser.add_argument("--keep", type=Path, help="copy the trained run directory here")
    args = parser.parse_args()
    import torch

    from mmcore.assembly import assemble
    from mmcore.builtins.codecs import MiniGPTBoxes
    from mmcore.kinds import BuildContext, ComponentConfig
    from mmcore.pipeline import Pipeline, load
    from mmcore.run import Run
    from mmcore.train import train

    torch.set_num_threads(2)
    codec = MiniGPTBoxes(ComponentConfig(), BuildContext(name="codec"))
    folder = Path(tempfile.mkdtemp(prefix="minigpt-v2-"))
    try:
        text = (ROOT / "examples" / "minigpt-v2-tiny.toml").read_text().replace('datasets = ["val"]', "datasets = []")
        text = re.sub(r"max_steps = (\d+)", lambda m: f"max_steps = {max(1, round(int(m[1]) * args.steps_scale))}",
                      text)
        manifest = folder / "minigpt-v2-tiny.toml"
        manifest.write_text(text)
        run = Run.create(folder / "run", assemble(manifest, require_data=True))
        untrained = run.assemble("cpu")
        before = scores(Pipeline(untrained.model.eval(), run.processor(untrained), "llama2"), args.scenes, codec)
        print(f"untrained: {before}  (load {_load()})", flush=True)
        start = time.perf_counter()
        train(folder / "run")
        took = time.perf_counter() - start
        print(f"trained in {took / 60:.1f} min wall (load average now {_load()}, {os.cpu_count()} cores)", flush=True)
        after = scores(load(folder / "run"), args.scenes, codec)
        print(f"trained: {after}", flush=True)
        if args.keep:
            shutil.copytree(folder / "run", args.keep)
        print(f"held-out REC Prec@0.5: {before['refer']:.3f} → {after['refer']:.3f} (aim ≥ 0.5); identify accuracy: "
              f"{before['identify']:.3f} → {after['identify']:.3f}; unparsed boxes {before['refer_unparsed']} → "
              f"{after['refer_unparsed']} of {args.scenes}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
