"""`mmcore export RUN OUT`: a self-contained copy of a run's final model, written atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mmcore.errors import MmcoreError

__all__ = ["export_run"]


def export_run(run_dir: Path, output: Path, merge_lora: bool = False) -> Path:
    """Write OUT/{manifest.toml, assembly.lock, plugins/, weights/*.safetensors[, weights/lora.json]}."""
    from mmcore.checkpoint import save_component_weights
    from mmcore.run import Run

    run = Run.open(run_dir)
    if not run.weights_dir.is_dir():
        raise MmcoreError(f"{run_dir}: no trained weights (run/weights); run `mmcore train {run_dir}` first")
    if output.exists():
        raise MmcoreError(f"{output}: already exists; choose a new directory (nothing was written)")
    pipeline = run.pipeline()
    lora = getattr(pipeline.model.llm, "lora_config", None)
    if merge_lora and lora:
        pipeline.model.llm.merge_lora()
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in ("manifest.toml", "assembly.lock"):
            shutil.copy2(run.root / name, tmp / name)
        if (run.root / "plugins").is_dir():
            shutil.copytree(run.root / "plugins", tmp / "plugins")
        save_component_weights(pipeline.model.components(), tmp / "weights")
        if lora and not merge_lora:
            (tmp / "weights" / "lora.json").write_text(json.dumps(lora))
        stamp = {"lock_hash": run.lock.hash, "exported_from": str(run.root)}
        (tmp / "weights" / "run.json").write_text(json.dumps(stamp))
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
