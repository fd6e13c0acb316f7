"""`mmcore train RUN`: run the manifest's stages in order, checkpointing and resuming.

A run continues where its checkpoints stand: a stage interrupted mid-way resumes at its step; a finished
stage whose step count was raised (re-assembled with more `max_steps` or `epochs`) continues from where
it ended; new stages after the trained ones run; a finished run says so.
"""

from __future__ import annotations

import contextlib
import json
import sys
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
from mmcore.errors import MmcoreError
from mmcore.manifest import StageSpec
from mmcore.run import Run
from mmcore.train._checkpoint import TrainState, latest_checkpoint, load_checkpoint, read_state, save_checkpoint
from mmcore.train._engine import World, close_world, init_world, make_engine
from mmcore.train._log import RunLog
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
        self.checkpoint = latest_checkpoint(run.checkpoints_dir)
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

        def task_of(name: str, i: int) -> str | None:
            return datasets[name][i].task

        def epoch(e: int) -> list[tuple[str, int]]:
            order = epoch_order(sizes, stage.mixture, seed, e, task_of, stage.sample_cap, stage.samples_per_epoch)
            if stage.group_by_modality_length:
                lengths = modality_lengths(datasets, order)
                order = group_by_modality_length(order, lengths, global_batch, seed + e)
            return order

        empty = [n for n, size in sizes.items() if size == 0]
        if empty:
            raise MmcoreError(f"stage '{stage.name}': dataset(s) {empty} have no records; check their files in "
                              f"[data.datasets]")
        order, steps = stage_order(epoch, stage.epochs, stage.max_steps, global_batch)
        processor = Processor.for_model(self.model, self.assembly.max_length, self.assembly.templates, stage.preprocess)
        return StageData(processor, datasets, order, stage.template), steps

    def _save(self, engine: Any = None, with_optimizer: bool = False) -> None:
        """Every rank enters (ZeRO-3 gathers, DeepSpeed saves its partitions); the main rank writes."""
        root = self.run.checkpoints_dir
        tag = f"ckpt-{self.state.stage_index}-{self.state.step:07d}"
        torch_optimizer = with_optimizer and engine is not None and not engine.is_deepspeed
        with engine.gathered() if engine is not None else contextlib.nullcontext():
            if with_optimizer and engine is not None and engine.is_deepspeed:
                engine.save_state(root / "deepspeed", tag)
            if self.world.is_main:
                folder = save_checkpoint(root, self.state, self.modules,
                                         engine.optimizer if torch_optimizer else None,
                                         engine.scheduler if torch_optimizer else None)
                stage = self.manifest.stages[min(self.state.stage_index, len(self.manifest.stages) - 1)].name
                self.assembly.pm.hook.mmcore_checkpoint_saved(stage=stage, step=self.state.step, path=str(folder))
        if self.world.size > 1:
            torch.distributed.barrier()

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
        if resuming and not deepspeed and self.checkpoint is not None:
            load_checkpoint(self.checkpoint, self.modules, optimizer, scheduler)
        if not resuming:
            self.state.skipped = {}
        self.state.stage_index, self.state.stage, self.state.step, self.state.steps = index, stage.name, start, steps
        self.state.completed.pop(stage.name, None)
        engine = make_engine(self.model, optimizer, scheduler, stage, self.world, accum)
        if resuming and deepspeed and self.checkpoint is not None:
            engine.load_state(self.run.checkpoints_dir / "deepspeed", self.checkpoint.name)
        if resuming:
            self.log.event(kind="resume", stage=stage.name, step=start)
        self._loop(stage, data, engine, batch, accum)
        self.state.completed[stage.name] = _plan_signature(stage, steps)
        self.state.stage_index, self.state.step = index + 1, 0
        self.engine = engine
        self._save(engine, with_optimizer=True)  # a stage given more steps later continues exactly from here
        self.checkpoint = latest_checkpoint(self.run.checkpoints_dir)

    def _loop(self, stage: StageSpec, data: StageData, engine: Any, batch: int, accum: int) -> None:
        from torch.utils.data import DataLoader

        start = self.state.step  # this process's first step of the stage (0, or where it resumed)
        plan = rank_batches(self.state.step, self.state.steps, self.world.rank, self.world.size, batch, accum)
        workers = self.manifest.data.num_workers
        loader = DataLoader(data, batch_sampler=plan, collate_fn=data.collate, num_workers=workers,
                            generator=torch.Generator().manual_seed(self.manifest.seed))
        batches = iter(loader)
        self.model.train()
        self.log.start_stage(stage.name, self.state.step, self.state.steps, stage.tensorboard)
        used = 0
        for step in range(self.state.step, self.state.steps):
            losses, tokens = [], 0
            for micro in range(accum):
                loaded = next(batches)
                for reason, count in loaded.skipped.items():
                    self.state.skipped[reason] = self.state.skipped.get(reason, 0) + count
                if loaded.first_error and self.manifest.data.strict:
                    raise MmcoreError(f"{loaded.first_error} (strict = true in [data]; set it false to skip "
                                      f"and count bad records)")
                losses.append(engine.micro_step(loaded.batch, micro == accum - 1))
                tokens += loaded.tokens
                used += 0 if loaded.batch is None else len(loaded.batch.sample_ids)
            if used == 0 and step + 1 - start >= min(10, self.state.steps - start):
                reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.state.skipped.items()))
                raise MmcoreError(f"stage '{stage.name}': every record so far was skipped ({reasons}); for "
                                  f"over-length or no-supervision raise [model] max_length, else fix the data")
            engine.step()
            loss = engine.mean(sum(losses) / len(losses))
            lr = engine.scheduler.get_last_lr()[0]
            metrics = self.log.step(stage.name, step + 1, loss, lr, tokens * self.world.size,
                                    (step + 1) % stage.log_every == 0 or step + 1 == self.state.steps)
            self.assembly.pm.hook.mmcore_train_step(stage=stage.name, step=step + 1, metrics=metrics)
            self.state.step = step + 1
            if stage.save_every and self.state.step % stage.save_every == 0 and self.state.step < self.state.steps:
                self._save(engine, with_optimizer=True)
        self.log.end_stage(stage.name, self.state.skipped)

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


def train(run_dir: str | Path) -> Trainer:
    """Run (or resume, or continue) the stages of RUN's manifest; returns the trainer with the trained model."""
    world = init_world()
    try:
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
    finally:
        close_world(world)
