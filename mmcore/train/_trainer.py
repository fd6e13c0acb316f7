"""`mmcore train RUN`: run the manifest's stages in order, checkpointing and resuming.

A run continues where its checkpoints stand: a stage interrupted mid-way resumes at its step; a finished
stage whose step count was raised (re-assembled with more `max_steps` or `epochs`) continues from where
it ended; new stages after the trained ones run; a finished run says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmcore.assembly._checks import stage_datasets
from mmcore.data import (
    Processor,
    StageData,
    build_datasets,
    epoch_order,
    group_by_modality_length,
    modality_lengths,
    rank_batches,
    stage_order,
)
from mmcore.data._mixture import loader_draws, loader_steps
from mmcore.errors import MmcoreError, SampleError
from mmcore.manifest import StageSpec
from mmcore.manifest._schema import LoaderSpec
from mmcore.run import Run
from mmcore.train._checkpoint import (
    TrainState,
    checkpoint_name,
    clear_staging,
    commit_checkpoint,
    listing_of,
    load_checkpoint,
    read_state,
    select_checkpoint,
    staging_folder,
    write_checkpoint_files,
    writing_checkpoint,
)
from mmcore.train._engine import (
    RankStopped,
    World,
    agree,
    all_sum,
    close_world,
    init_world,
    is_comm_error,
    lost_contact,
    make_engine,
    shared,
    stop_rank,
)
from mmcore.train._log import RunLog, mean_terms
from mmcore.train._optim import build_optimizer, set_trainable

__all__ = ["Trainer", "train"]


def _batch_plan(stage: StageSpec, world: World) -> tuple[int, int]:
    """(per-device batch, gradient accumulation); a global batch must split evenly."""
    if stage.global_batch_size is None:
        return stage.batch_size, stage.gradient_accumulation
    per_step = stage.batch_size * world.size
    if stage.global_batch_size % per_step:
        raise MmcoreError(f"stage '{stage.name}': global_batch_size {stage.global_batch_size} is not a multiple "
                          f"of batch_size {stage.batch_size} × {world.size} processes; adjust one of them")
    return stage.batch_size, stage.global_batch_size // per_step


def _loaders(stage: StageSpec, names: list[str]) -> dict[str, tuple[int, float]]:
    """mixture = "minigpt-v2": each dataset's (batch size, sample ratio); the stage's batch_size and 1 unless set."""
    specs = {n: stage.loaders.get(n, LoaderSpec()) for n in names}
    return {n: (spec.batch_size or stage.batch_size, spec.sample_ratio) for n, spec in specs.items()}


def _write(root: Path, folder: Path, work: Callable[[], None]) -> None:
    with writing_checkpoint(root, folder):
        work()


def _describe(datasets: dict[str, Any], names: list[str], base_dir: Path) -> str:
    """dataset 'captions' (path = /data/c.jsonl) — a dataset named with the files it reads."""
    parts = []
    for name in names:
        dataset = getattr(datasets[name], "dataset", datasets[name])  # a PackedDataset wraps the dataset
        files = type(dataset).data_paths(dataset.config) if hasattr(dataset, "config") else {}
        where = ", ".join(f"{k} = {base_dir / Path(v).expanduser()}" for k, v in files.items())
        parts.append(f"dataset '{name}'" + (f" ({where})" if where else ""))
    return ", ".join(parts)


def _refuse_imported_adapters(run: Run) -> None:
    """An imported LoRA run keeps its adapters only in RUN/weights, which training would replace."""
    from safetensors import safe_open

    for path in run.weights_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("subset"):
                raise MmcoreError(f"{path}: imported adapters that training would replace (it starts from the "
                                  f"manifest); to train on, `mmcore export {run.root} OUT --format hf-llava` then "
                                  f"`mmcore import hf-llava OUT -o NEW_RUN` and train NEW_RUN")


def _plan_signature(stage: StageSpec, steps: int) -> dict[str, Any]:
    return {"steps": steps, "max_steps": stage.max_steps, "epochs": stage.epochs}


class Trainer:
    """Holds the run's model and state across stages."""

    def __init__(self, run: Run, world: World) -> None:
        self.run, self.world = run, world
        self.run_dir = run.root
        self.assembly = run.assemble("cpu")
        self.manifest = self.assembly.loaded.manifest
        self.model = self.assembly.model
        self.modules = self.model.components()
        self.log = RunLog(run.root, world.is_main)
        self.bounds: dict[str, list[int]] = {}  # stage → micro-batch bounds when its micro-batches differ in size
        self.checkpoint = self._resume_point()
        if self.checkpoint is None:
            _refuse_imported_adapters(run)
        if self.checkpoint is None and world.is_main and any(run.weights_dir.glob("*.safetensors")):
            print(f"note: {run.weights_dir} (an earlier run's result or an import) is not where training starts: "
                  f"it starts from the manifest and replaces it; to continue from a model, name its files in the "
                  f"manifest (`weights = ...`, or `mmcore export --format hf-llava` then `mmcore import hf-llava`)",
                  file=sys.stderr)
        self.state = read_state(self.checkpoint) if self.checkpoint else TrainState()
        self._check_stage_order()
        if self.state.lora:
            self.model.llm.apply_lora(**self.state.lora)
        if self.checkpoint:
            load_checkpoint(self.checkpoint, self.modules)
        self.model.to(world.device)

    def _resume_point(self) -> Path | None:
        """The newest checkpoint that verifies, chosen by the main rank: half-written staging folders are
        removed first; a damaged newest one falls back with a warning; none good is an error."""
        root = self.run.checkpoints_dir

        def choose() -> str | None:
            if not root.is_dir():
                return None
            for path in clear_staging(root):
                print(f"note: removed {path}, a checkpoint a stopped process left half-written", file=sys.stderr)
            chosen = select_checkpoint(root)
            return chosen.name if chosen else None

        name = shared(self.world, choose)
        return root / name if name else None

    def _check_stage_order(self) -> None:
        done, names = list(self.state.completed), [s.name for s in self.manifest.stages]
        if names[: len(done)] != done:
            raise MmcoreError(f"{self.run_dir}: its checkpoints trained stages {done}, but the manifest now has "
                              f"{names}; the trained stages must stay first and in order — train the new plan in a "
                              f"new run directory (-o NEW)")

    def _order(self, stage: StageSpec, index: int, global_batch: int) -> tuple[StageData, int]:
        datasets = build_datasets(self.assembly, stage_datasets(self.manifest, stage))
        sizes = {n: len(d) for n, d in datasets.items()}
        seed = self.manifest.seed * 1000 + index

        last_task: dict[str, str | None] = {}

        def task_of(name: str, i: int) -> str | None:
            """A malformed record joins the task of the record before it: drawn like its neighbours, then
            skipped and counted when loaded (or named, with strict = true)."""
            try:
                last_task[name] = datasets[name][i].task
            except SampleError:
                pass
            return last_task.get(name)

        def epoch(e: int) -> list[tuple[str, int]]:
            order = epoch_order(sizes, stage.mixture, seed, e, task_of, stage.sample_cap, stage.samples_per_epoch)
            if stage.group_by_modality_length:
                lengths = modality_lengths(datasets, order)
                order = group_by_modality_length(order, lengths, global_batch, seed + e)
            return order

        empty = [n for n, size in sizes.items() if size == 0]
        if empty:
            named = _describe(datasets, empty, self.assembly.loaded.base_dir)
            raise MmcoreError(f"stage '{stage.name}': the stage's datasets are empty: {named} has no records; add "
                              f"records to it or drop it from the stage's datasets")
        if stage.mixture == "minigpt-v2":  # one draw of one dataset per micro-batch, world × accum per step
            loaders = _loaders(stage, list(sizes))
            draws = self.world.size * _batch_plan(stage, self.world)[1]
            steps = loader_steps(sizes, loaders, stage.epochs, stage.max_steps, draws, stage.samples_per_epoch)
            order, self.bounds[stage.name] = loader_draws(sizes, loaders, seed, steps * draws)
        else:
            order, steps = stage_order(epoch, stage.epochs, stage.max_steps, global_batch)
        processor = Processor.for_model(self.model, self.assembly.max_length, self.assembly.templates, stage.preprocess,
                                        self.manifest.model.max_reply_tokens)
        return StageData(processor, datasets, order, stage.template), steps

    def _check_finite(self) -> None:
        """Never save non-finite weights (a gradient overflow under an engine that cannot skip it)."""
        for name, module in self.modules.items():
            bad = next((n for n, p in module.named_parameters() if p.requires_grad and not torch.isfinite(p).all()),
                       None)
            if bad is not None:
                last = self.checkpoint.name if self.checkpoint else "none"
                message = (f"stage '{self.state.stage}' step {self.state.step}: the weights of '{name}' are no longer "
                           f"finite ({bad}); nothing was saved and the last good checkpoint ({last}) is kept — lower "
                           f"the learning rate or set grad_clip, then `mmcore train {self.run_dir}` resumes")
                raise MmcoreError(message) if self.world.is_main else RankStopped(message)

    def _save(self, engine: Any = None, with_optimizer: bool = False) -> None:
        """Every rank enters (ZeRO-3 gathers; DeepSpeed writes its partitions into the staging folder); the main
        rank writes the rest, lists every file and renames the folder into place. A failed write on any rank
        stops every rank with one line, leaving the last good checkpoint."""
        root = self.run.checkpoints_dir
        name = checkpoint_name(self.state)
        folder = staging_folder(root, name)
        deepspeed = with_optimizer and engine is not None and engine.is_deepspeed
        torch_optimizer = with_optimizer and engine is not None and not engine.is_deepspeed
        keep = self.manifest.stages[min(self.state.stage_index, len(self.manifest.stages) - 1)].keep_checkpoints
        if self.state.stage_index > 0 and self.state.step == 0:  # the end of stage index-1
            keep = self.manifest.stages[self.state.stage_index - 1].keep_checkpoints

        def stage_folder() -> None:
            with writing_checkpoint(root, folder):
                root.mkdir(parents=True, exist_ok=True)
                clear_staging(root)
                folder.mkdir()

        def write_and_commit() -> Path:
            with writing_checkpoint(root, folder):
                write_checkpoint_files(folder, self.state, self.modules, engine.optimizer if torch_optimizer else None,
                                       engine.scheduler if torch_optimizer else None)
                kind = "deepspeed" if deepspeed else "torch" if torch_optimizer else None
                return commit_checkpoint(root, folder, self.state, kind, keep)

        with engine.gathered() if engine is not None else contextlib.nullcontext():
            self._check_finite()
            agree(self.world, stage_folder, main_only=True)
            if deepspeed:
                agree(self.world, lambda: _write(root, folder, lambda: engine.save_state(folder / "deepspeed", name)))
            final = agree(self.world, write_and_commit, main_only=True)
        self.checkpoint = root / name
        if self.world.is_main and final is not None:
            self.assembly.pm.hook.mmcore_checkpoint_saved(stage=self.state.stage, step=self.state.step, path=str(final))
        self._last_save = time.monotonic()

    def pending(self, index: int, stage: StageSpec) -> tuple[int, int, StageData] | None:
        """(first step, steps, data) when `stage` has work left, else None."""
        batch, accum = _batch_plan(stage, self.world)
        done = self.state.completed.get(stage.name)
        last = list(self.state.completed)[-1] if self.state.completed else None
        if done is not None and done == _plan_signature(stage, done["steps"]):
            return None  # finished with the plan it still has
        data, steps = self._order(stage, index, batch * self.world.size * accum)
        if done is not None:
            if steps <= done["steps"]:
                return None
            if stage.name != last:
                raise MmcoreError(f"stage '{stage.name}' ran {done['steps']} steps and now asks for {steps}, but later "
                                  f"stages have trained on its result; train the new plan in a new run directory")
            return done["steps"], steps, data
        if self.state.stage_index == index and self.state.step > 0 and self.state.stage == stage.name:
            return self.state.step, steps, data
        return 0, steps, data

    def run_stage(self, index: int, stage: StageSpec, start: int, steps: int, data: StageData) -> None:
        trainable = set_trainable(self.model, self.manifest, stage)
        for name, names in trainable.items():
            self.state.trained[name] = sorted(set(self.state.trained.get(name, [])) | set(names))
        self.state.lora = getattr(self.model.llm, "lora_config", None)
        self.model.llm.set_gradient_checkpointing(stage.gradient_checkpointing)
        batch, accum = _batch_plan(stage, self.world)
        optimizer, scheduler = build_optimizer(self.model, self.manifest, stage, steps)
        resuming = start > 0 and self.checkpoint is not None
        deepspeed = stage.engine.startswith("deepspeed")
        if resuming and self.checkpoint is not None:
            self._note_optimizer(stage, self.checkpoint)
        if resuming and not deepspeed and self.checkpoint is not None:
            load_checkpoint(self.checkpoint, self.modules, optimizer, scheduler)
        if not resuming:
            self.state.skipped = {}
        self.state.stage_index, self.state.stage, self.state.step, self.state.steps = index, stage.name, start, steps
        self.state.completed.pop(stage.name, None)
        engine = make_engine(self.model, optimizer, scheduler, stage, self.world, accum)
        if resuming and deepspeed and self.checkpoint is not None and (self.checkpoint / "deepspeed").is_dir():
            engine.load_state(self.checkpoint / "deepspeed", self.checkpoint.name)
        if resuming:
            self.log.event(kind="resume", stage=stage.name, step=start, checkpoint=str(self.checkpoint))
        self._loop(stage, data, engine, batch, accum)
        self.state.completed[stage.name] = _plan_signature(stage, steps)
        self.state.stage_index, self.state.step = index + 1, 0
        self.engine = engine
        self._save(engine, with_optimizer=True)  # a stage given more steps later continues exactly from here

    def _note_optimizer(self, stage: StageSpec, folder: Path) -> None:
        """Say so when the checkpoint's optimizer state cannot be used by this stage's engine."""
        saved = listing_of(folder).get("optimizer")
        wanted = "deepspeed" if stage.engine.startswith("deepspeed") else "torch"
        if saved != wanted and self.world.is_main:
            held = f"{saved}'s optimizer state" if saved else "no optimizer state"
            print(f"warning: {folder} holds {held}; stage '{stage.name}' (engine {stage.engine}) resumes with the "
                  f"trained weights and a fresh optimizer", file=sys.stderr)

    def _save_due(self, stage: StageSpec, step: int) -> bool:
        """A mid-stage checkpoint every `save_every` steps or `save_every_minutes` of wall time (decided by the
        main rank's clock, agreed by all)."""
        if step >= self.state.steps:
            return False
        by_steps = bool(stage.save_every and step % stage.save_every == 0)
        minutes = stage.save_every_minutes
        by_time = bool(minutes and time.monotonic() - self._last_save >= minutes * 60)
        return by_steps or (by_time if self.world.size == 1 else all_sum([float(by_time and self.world.is_main)],
                                                                               self.world)[0] > 0)

    def _non_finite(self, stage: StageSpec, step: int, value: float, origins: list[str]) -> bool:
        """True when the micro-batch's loss may be back-propagated; else skipped (counted) or the stage stops."""
        bad = all_sum([0.0 if math.isfinite(value) else 1.0], self.world)[0]
        if not bad:
            return True
        every: list[Any] = [origins]
        if self.world.size > 1:
            every = [None] * self.world.size
            torch.distributed.all_gather_object(every, origins)
        samples = [o for part in every for o in part]
        if stage.skip_non_finite:
            self.state.skipped["non-finite-loss"] = self.state.skipped.get("non-finite-loss", 0) + len(samples)
            self.log.event(kind="non_finite", stage=stage.name, step=step, samples=samples)
            return False
        last = self.checkpoint.name if self.checkpoint else "none: the run starts over"
        message = (f"stage '{stage.name}' step {step}: the loss is not finite ({value}) on samples "
                   f"{', '.join(samples[:8])}{' …' if len(samples) > 8 else ''}; stopped, nothing was saved after the "
                   f"last good checkpoint ({last}) — check those records or lower lr, or set skip_non_finite = true "
                   f"in the stage to skip such batches")
        raise MmcoreError(message) if self.world.is_main else RankStopped(message)

    def _loop(self, stage: StageSpec, data: StageData, engine: Any, batch: int, accum: int) -> None:
        from torch.utils.data import DataLoader

        start = self.state.step  # this process's first step of the stage (0, or where it resumed)
        plan = rank_batches(self.state.step, self.state.steps, self.world.rank, self.world.size, batch, accum,
                            self.bounds.get(stage.name))
        workers = self.manifest.data.num_workers
        loader = DataLoader(data, batch_sampler=plan, collate_fn=data.collate, num_workers=workers,
                            generator=torch.Generator().manual_seed(self.manifest.seed))
        batches = iter(loader)
        self.model.train()
        self.log.start_stage(stage.name, self.state.step, self.state.steps, stage.tensorboard)
        self._last_save = time.monotonic()
        used = 0
        for step in range(self.state.step, self.state.steps):
            losses, tokens, terms = [], 0, []
            for micro in range(accum):
                loaded = next(batches)
                for reason, count in loaded.skipped.items():
                    self.state.skipped[reason] = self.state.skipped.get(reason, 0) + count
                if loaded.first_error and self.manifest.data.strict:
                    raise MmcoreError(f"{loaded.first_error} (strict = true in [data]; set it false to skip "
                                      f"and count bad records)")

                def check(value: float, origins: list[str] = loaded.origins, at: int = step + 1) -> bool:
                    return self._non_finite(stage, at, value, origins)

                value, kept = engine.micro_step(loaded.batch, micro == accum - 1,
                                                check if loaded.batch is not None or self.world.size > 1 else None)
                if kept:
                    losses.append(value)
                    terms.append(dict(self.model.loss_terms) if loaded.batch is not None else {})
                tokens += loaded.tokens
                used += 0 if loaded.batch is None else len(loaded.batch.sample_ids)
            if used == 0 and step + 1 - start >= min(10, self.state.steps - start):
                reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.state.skipped.items()))
                raise MmcoreError(f"stage '{stage.name}': every record so far was skipped ({reasons}); for "
                                  f"over-length or no-supervision raise [model] max_length, else fix the data")
            self._update(stage, step + 1, engine, losses, tokens, terms)
            if self._save_due(stage, self.state.step):
                self._save(engine, with_optimizer=True)
        self.log.end_stage(stage.name, self.state.skipped)

    def _update(self, stage: StageSpec, step: int, engine: Any, losses: list[float], tokens: int,
                terms: list[dict[str, float]] | None = None) -> None:
        """The optimizer step (skipped when the gradients are not finite and the stage skips such batches),
        then the step's mean loss over every rank and its log line."""
        total, count = all_sum([sum(losses), float(len(losses))], self.world)  # every rank steps alike
        norm = engine.grad_norm() if count else 0.0
        finite = norm is None or all_sum([0.0 if math.isfinite(norm) else 1.0], self.world)[0] == 0
        if not finite and not stage.skip_non_finite:
            last = self.checkpoint.name if self.checkpoint else "none"
            message = (f"stage '{stage.name}' step {step}: the gradients are not finite (norm {norm}); stopped, the "
                       f"last good checkpoint ({last}) is kept — lower lr, or set skip_non_finite = true to skip such "
                       f"batches")
            raise MmcoreError(message) if self.world.is_main else RankStopped(message)
        if not finite:
            self.state.skipped["non-finite-gradient"] = self.state.skipped.get("non-finite-gradient", 0) + 1
            self.log.event(kind="non_finite", stage=stage.name, step=step, gradient_norm=str(norm))
        engine.step(update=bool(count) and finite)
        loss = total / count if count else float("nan")
        lr = engine.scheduler.get_last_lr()[0]
        metrics = self.log.step(stage.name, step, loss, lr, tokens * self.world.size,
                                step % stage.log_every == 0 or step == self.state.steps, mean_terms(terms or []))
        self.assembly.pm.hook.mmcore_train_step(stage=stage.name, step=step, metrics=metrics)
        self.state.step = step

    def finish(self) -> None:
        """Write RUN/weights (every component, whole) for `mmcore.load`, `eval` and `export`."""
        engine = getattr(self, "engine", None)
        with engine.gathered() if engine is not None else contextlib.nullcontext():
            if self.world.is_main:
                steps = {name: done["steps"] for name, done in self.state.completed.items()}
                self.run.write_weights(self.modules, getattr(self.model.llm, "lora_config", None), steps)
        if self.world.is_main:
            self.log.event(kind="finished", stages=[s.name for s in self.manifest.stages])


def _finished_message(trainer: Trainer) -> str:
    done = ", ".join(f"{name} {info['steps']} steps" for name, info in trainer.state.completed.items())
    return (f"{trainer.run_dir}: already trained ({done}); its model is in {trainer.run.weights_dir}. To train more, "
            f"raise a stage's max_steps or add a stage, then `mmcore assemble MANIFEST -o {trainer.run_dir} --force`")


def _train(run_dir: str | Path, world: World) -> Trainer:
    run = Run.open(run_dir)
    if not run.lock.resolved.get("stages"):
        raise MmcoreError(f"{run.lock.manifest_source}: no [[stages]] to train; add one and re-assemble")
    with run.training():
        trainer = Trainer(run, world)
        work = [(i, s, trainer.pending(i, s)) for i, s in enumerate(trainer.manifest.stages)]
        todo = [(i, s, p) for i, s, p in work if p is not None]
        if not todo and (run.weights_dir / "run.json").is_file():
            if world.is_main:
                print(_finished_message(trainer))
            return trainer
        for index, stage, (start, steps, data) in todo:
            trainer.run_stage(index, stage, start, steps, data)
        trainer.finish()
    if world.is_main and trainer.manifest.eval.datasets:
        from mmcore.eval import evaluate_run

        results = evaluate_run(run.root)  # from RUN/weights, as a user would load them
        trainer.log.event(kind="eval", results=results)
        print(json.dumps(results, indent=2))
    return trainer


def train(run_dir: str | Path) -> Trainer:
    """Run (or resume, or continue) the stages of RUN's manifest; returns the trainer with the trained model.

    On several ranks a failure stops every rank within MMCORE_DIST_TIMEOUT seconds with one line."""
    world = init_world()
    ok = False
    try:
        trainer = _train(run_dir, world)
        ok = True
        return trainer
    except RankStopped:
        if world.size > 1:
            raise SystemExit(2) from None  # the rank that failed reports it
        raise
    except MmcoreError as err:
        if world.size > 1:
            stop_rank(world, str(err))
        raise
    except Exception as err:
        if world.size > 1 and is_comm_error(err):
            from mmcore.train._engine import DIST_TIMEOUT_ENV

            reason, timeout = lost_contact(err), os.environ.get(DIST_TIMEOUT_ENV, "1800")
            stop_rank(world, f"lost contact with the other ranks ({reason}); another rank died or did not answer "
                              f"within {timeout} s ({DIST_TIMEOUT_ENV}) — `mmcore train {run_dir}` resumes from the "
                              f"last checkpoint", lost=f"{reason}; the limit is {timeout} s")
        raise
    finally:
        close_world(world, ok)
