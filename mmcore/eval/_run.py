"""Evaluating a run on named datasets of its manifest (or a LLaVA JSON file), writing RUN/eval/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError, choices_text, did_you_mean
from mmcore.eval._evaluate import evaluate, summarize, write_report
from mmcore.kinds import BuildContext, Dataset
from mmcore.pipeline import Pipeline, load

__all__ = ["evaluate_run"]


def _dataset(pipeline: Pipeline, manifest: Any, base_dir: Path, name: str) -> Dataset:
    registry = pipeline.registry
    ctx = BuildContext(name=name, base_dir=base_dir, tokenizer=pipeline.tokenizer)
    if name in manifest.data.datasets:
        spec = manifest.data.datasets[name]
        cls = registry.resolve("dataset", spec.type).cls
        return cls(cls.Config.model_validate(spec.options()), ctx)
    path = Path(name)
    if path.suffix in (".json", ".jsonl"):
        cls = registry.resolve("dataset", "llava-json").cls
        return cls(cls.Config(path=str(path.resolve()), image_folder=str(path.resolve().parent)), ctx)
    names = list(manifest.data.datasets)
    raise MmcoreError(f"--data {name}: not a dataset of this run{did_you_mean(name, names)} and not a .json/.jsonl "
                      f"file; datasets: {choices_text(names)}")


def evaluate_run(run_dir: Path, datasets: list[str] | None = None, pipeline: Pipeline | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """Evaluate RUN (its trained weights when present) and write RUN/eval/<dataset>/ reports."""
    pipeline = pipeline or load(run_dir)
    lock = json.loads((run_dir / "assembly.lock").read_text())
    from mmcore.manifest import Manifest

    manifest = Manifest.model_validate(lock["resolved"])
    settings = manifest.eval.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    names = datasets or settings.datasets
    if not names:
        raise MmcoreError("nothing to evaluate: pass --data NAME or list datasets under [eval] in the manifest")
    template = settings.template or (manifest.stages[-1].template if manifest.stages else "vicuna_v1")
    codec_cls = pipeline.registry.resolve("box_codec", settings.box_codec).cls
    codec = codec_cls(codec_cls.Config(), BuildContext(name="codec"))
    results = {}
    for name in names:
        dataset = _dataset(pipeline, manifest, Path(lock["base_dir"]), name)
        records = evaluate(pipeline, dataset, template, codec, settings.batch_size, settings.max_new_tokens,
                           settings.limit, settings.answer_format)
        results[name] = summarize(records)
        write_report(records, results[name], run_dir / "eval" / Path(name).stem, settings.sheet_size)
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
