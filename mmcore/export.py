"""`mmcore export RUN OUT`: a self-contained copy of a run's final model, written atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mmcore.errors import MmcoreError

__all__ = ["export_run"]


def export_run(run: Path, output: Path, merge_lora: bool = False) -> Path:
    """Write OUT/{manifest.toml, assembly.lock, weights/*.safetensors[, weights/lora.json]}."""
    from mmcore.checkpoint import save_component_weights
    from mmcore.pipeline import load

    if not (run / "weights").is_dir():
        raise MmcoreError(f"{run}: no trained weights (run/weights); run `mmcore train {run}` first")
    if output.exists():
        raise MmcoreError(f"{output}: already exists; choose a new directory (nothing was written)")
    pipeline = load(run)
    lora = getattr(pipeline.model.llm, "lora_config", None)
    if merge_lora and lora:
        pipeline.model.llm.merge_lora()
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("manifest.toml", "assembly.lock"):
        shutil.copy2(run / name, tmp / name)
    save_component_weights(pipeline.model.components(), tmp / "weights")
    if lora and not merge_lora:
        (tmp / "weights" / "lora.json").write_text(json.dumps(lora))
    os.replace(tmp, output)
    return output
