"""Evaluating a run on named datasets of its manifest (or a LLaVA JSON file), writing RUN/eval/.

Settings come from the run (`[eval]`, its template); a `--limit` evaluation writes beside the full one
(`RUN/eval/NAME.limitN/`, `metrics.limitN.json`) and never replaces its figures.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError, choices_text, did_you_mean
from mmcore.eval._evaluate import evaluate, summarize, write_report
from mmcore.eval._heads import HeadScores
from mmcore.kinds import BuildContext, Dataset
from mmcore.manifest import EvalSpec
from mmcore.pipeline import Pipeline

__all__ = ["evaluate_run"]


def _dataset(registry: Any, run: Any, name: str, tokenizer: Any, image_folder: str | None) -> Dataset:
    """A [data.datasets] table of the run, or a LLaVA .json/.jsonl file (images beside it unless told)."""
    from mmcore.assembly._build import ComponentSite, build_component

    manifest = run.assembly.loaded.manifest
    if name in manifest.data.datasets:
        site = ComponentSite(run.assembly.loaded, ("data", "datasets", name))
        ctx = BuildContext(name=name, base_dir=run.assembly.loaded.base_dir, tokenizer=tokenizer)
        return build_component(site, registry, "dataset", manifest.data.datasets[name], ctx)[0]
    path = Path(name)
    if path.suffix in (".json", ".jsonl"):
        if not path.is_file():
            raise MmcoreError(f"--data {name}: no such file; pass an existing .json/.jsonl file")
        folder = Path(image_folder) if image_folder else path.resolve().parent
        if not folder.is_dir():
            raise MmcoreError(f"--image-folder {folder}: no such directory")
        cls = registry.resolve("dataset", "llava-json").cls
        config = cls.Config(path=str(path.resolve()), image_folder=str(folder.resolve()))
        return cls(config, BuildContext(name=path.stem, tokenizer=tokenizer))
    names = list(manifest.data.datasets)
    raise MmcoreError(f"--data {name}: not a dataset of this run{did_you_mean(name, names)} and not a .json/.jsonl "
                      f"file; datasets: {choices_text(names)}")


class _Loaded:
    """A run opened once for evaluation: its assembly (for datasets) and its pipeline."""

    def __init__(self, run_dir: Path, pipeline: Pipeline | None) -> None:
        from mmcore.pipeline import Pipeline
        from mmcore.run import Run

        self.run = Run.open(run_dir)
        self.assembly = self.run.assemble("cpu")
        if pipeline is None:
            self.run.load_weights(self.assembly.model)
            self.assembly.model.eval()
            pipeline = Pipeline(self.assembly.model, self.run.processor(self.assembly), self.run.default_template())
        self.pipeline = pipeline


def evaluate_run(run_dir: str | Path, datasets: list[str] | None = None, pipeline: Pipeline | None = None,
                 image_folder: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Evaluate RUN (its trained weights when present) and write RUN/eval/<dataset>/ reports."""
    opened = _Loaded(Path(run_dir), pipeline)
    run, pipeline = opened.run, opened.pipeline
    settings = EvalSpec.model_validate(run.lock.resolved.get("eval") or {})
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    names = datasets or settings.datasets
    if not names:
        raise MmcoreError("nothing to evaluate: pass --data NAME or list datasets under [eval] in the manifest")
    template = settings.template or run.default_template()
    pipeline.processor.templates.setdefault(template, opened.assembly.template(template))
    registry = opened.assembly.registry
    codec_cls = registry.resolve("box_codec", settings.box_codec).cls
    codec = codec_cls(codec_cls.Config(), BuildContext(name="codec"))
    suffix = f".limit{settings.limit}" if settings.limit else ""
    results = {}
    for name in names:
        dataset = _dataset(registry, opened, name, pipeline.tokenizer, image_folder)
        skipped: Counter[str] = Counter()
        heads = HeadScores.of(pipeline.model)
        if settings.mode == "multi-choice":  # MiniGPT-v2's multi_select: candidates ranked by per-sample loss
            from mmcore.eval._minigpt import evaluate_choices

            heads = None
            records = evaluate_choices(pipeline, dataset, template, settings.batch_size, settings.limit, skipped)
        else:
            records = evaluate(pipeline, dataset, template, codec, settings.batch_size, settings.max_new_tokens,
                               settings.limit, settings.answer_format, skipped, heads, settings.resample,
                               run.lock.resolved.get("seed", 0))
        results[name] = summarize(records, skipped)
        if heads is not None:
            results[name]["heads"] = heads.result()
        write_report(records, results[name], run.eval_dir / f"{Path(name).stem}{suffix}", settings.sheet_size)
    run.eval_dir.mkdir(exist_ok=True)
    (run.eval_dir / f"metrics{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
