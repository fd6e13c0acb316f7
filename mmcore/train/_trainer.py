"""`mmcore train RUN`: run the manifest's stages in order, checkpointing and resuming."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, cast

import torch

from mmcore.errors import MmcoreError
from mmcore.kinds import Encoder
from mmcore.manifest import StageSpec
from mmcore.pipeline import Pipeline
from mmcore.train._checkpoint import TrainState, latest_checkpoint, load_checkpoint, read_state, save_checkpoint
from mmcore.train._data import StageData, build_datasets, modality_lengths
from mmcore.train._engine import World, close_world, init_world, make_engine
from mmcore.train._log import RunLog
from mmcore.train._mixture import epoch_order, group_by_modality_length, rank_batches, stage_order
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


def _refuse_imported_adapters(run_dir: Path) -> None:
    """An imported LoRA run keeps its adapters only in RUN/weights, which training would replace."""
    from safetensors import safe_open

    for path in (run_dir / "weights").glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("subset"):
                raise MmcoreError(f"{path}: imported adapters that training would replace (it starts from the "
                                  f"manifest); to train on, `mmcore export {run_dir} OUT --format hf-llava` then "
                                  f"`mmcore import hf-llava OUT -o NEW_RUN` and train NEW_RUN")


class Trainer:
    """Holds the run's model and state across stages."""

    def __init__(self, run_dir: Path, world: World) -> None:
        from mmcore.assembly import assemble

        lock_path = run_dir / "assembly.lock"
        if not lock_path.exists():
            raise MmcoreError(f"{run_dir}: no assembly.lock; run `mmcore assemble MANIFEST -o {run_dir}` first")
        lock = json.loads(lock_path.read_text())
        self.run_dir, self.world = run_dir, world
        self.assembly = assemble(run_dir / "manifest.toml", device="cpu", base_dir=Path(lock["base_dir"]))
        self.manifest = self.assembly.loaded.manifest
        self.model = self.assembly.model
        self.pipeline = Pipeline(self.model, self.assembly.max_length, self.assembly.registry,
                                 self.assembly.loaded.base_dir)
        self.modules = self.model.components()
        self.log = RunLog(run_dir, world.is_main)
        self.checkpoint = latest_checkpoint(run_dir / "checkpoints")
        if self.checkpoint is None:
            _refuse_imported_adapters(run_dir)
        if self.checkpoint is None and world.is_main and any((run_dir / "weights").glob("*.safetensors")):
            print(f"note: {run_dir / 'weights'} (an earlier run's result or an import) is not where training starts: "
                  f"it starts from the manifest and replaces it; to continue from a model, name its files in the "
                  f"manifest (`weights = ...`, or `mmcore export --format hf-llava` then `mmcore import hf-llava`)",
                  file=sys.stderr)
        self.state = read_state(self.checkpoint) if self.checkpoint else TrainState()
        if self.state.lora:
            self.model.llm.apply_lora(**self.state.lora)
        if self.checkpoint:
            load_checkpoint(self.checkpoint, self.modules)
        self.model.to(world.device)

    def _order(self, stage: StageSpec, index: int, names: list[str], global_batch: int) -> tuple[StageData, int]:
        datasets = build_datasets(self.assembly, names)
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

        order, steps = stage_order(epoch, stage.epochs, stage.max_steps, global_batch)
        return StageData(self.pipeline, datasets, order, stage.template), steps

    def _save(self, engine: Any = None, mid_stage: bool = False) -> None:
        """Every rank enters (ZeRO-3 gathers, DeepSpeed saves its partitions); the main rank writes."""
        root = self.run_dir / "checkpoints"
        tag = f"ckpt-{self.state.stage_index}-{self.state.step:07d}"
        torch_optimizer = mid_stage and engine is not None and not engine.is_deepspeed
        with engine.gathered() if engine is not None else contextlib.nullcontext():
            if mid_stage and engine is not None and engine.is_deepspeed:
                engine.save_state(root / "deepspeed", tag)
            if self.world.is_main:
                folder = save_checkpoint(root, self.state, self.modules,
                                         engine.optimizer if torch_optimizer else None,
                                         engine.scheduler if torch_optimizer else None)
                self.assembly.pm.hook.mmcore_checkpoint_saved(
                    stage=self.manifest.stages[min(self.state.stage_index, len(self.manifest.stages) - 1)].name,
                    step=self.state.step, path=str(folder))
        if self.world.size > 1:
            torch.distributed.barrier()

    def run_stage(self, index: int, stage: StageSpec) -> None:
        trainable = set_trainable(self.model, self.manifest, stage)
        for name, names in trainable.items():
            self.state.trained[name] = sorted(set(self.state.trained.get(name, [])) | set(names))
        self.state.lora = getattr(self.model.llm, "lora_config", None)
        self.model.llm.set_gradient_checkpointing(stage.gradient_checkpointing)
        batch, accum = _batch_plan(stage, self.world)
        global_batch = batch * self.world.size * accum
        names = stage.datasets or (list(stage.mixture) if isinstance(stage.mixture, dict) else
                                   list(self.manifest.data.datasets))
        if not names:
            raise MmcoreError(f"stage '{stage.name}': no datasets; add [data.datasets.NAME] tables")
        data, steps = self._order(stage, index, names, global_batch)
        optimizer, scheduler = build_optimizer(self.model, self.manifest, stage, steps)
        resuming = self.state.stage_index == index and self.state.step > 0 and self.checkpoint is not None
        deepspeed = stage.engine.startswith("deepspeed")
        checkpoint = self.checkpoint
        if resuming and not deepspeed and checkpoint is not None:
            load_checkpoint(checkpoint, self.modules, optimizer, scheduler)
        elif not resuming:
            self.state.step, self.state.skipped = 0, {}
        self.state.stage_index, self.state.steps = index, steps
        engine = make_engine(self.model, optimizer, scheduler, stage, self.world, accum)
        if resuming and deepspeed and checkpoint is not None:
            engine.load_state(self.run_dir / "checkpoints" / "deepspeed", checkpoint.name)
        if resuming:
            self.log.event(kind="resume", stage=stage.name, step=self.state.step)
        restore = {name: cast(Encoder, self.model.encoders[name]).with_preprocessing(**options)
                   for name, options in stage.preprocess.items()}  # e.g. LLaVA pretrain: square, not pad
        try:
            self._loop(stage, data, engine, batch, accum)
        finally:
            for name, previous in restore.items():
                cast(Encoder, self.model.encoders[name]).with_preprocessing(**previous)
        self.state.stage_index, self.state.step = index + 1, 0
        self.engine = engine
        self._save(engine)

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
                self._save(engine, mid_stage=True)
        self.log.end_stage(stage.name, self.state.skipped)

    def finish(self) -> None:
        """Write RUN/weights (every component, whole) for `mmcore.load`, `eval` and `export`."""
        from mmcore.checkpoint import save_component_weights

        engine = getattr(self, "engine", None)
        with engine.gathered() if engine is not None else contextlib.nullcontext():
            if self.world.is_main:
                save_component_weights(self.modules, self.run_dir / "weights")
        if not self.world.is_main:
            return
        lora = getattr(self.model.llm, "lora_config", None)
        marker = self.run_dir / "weights" / "lora.json"
        if lora:
            marker.write_text(json.dumps(lora))
        elif marker.exists():
            marker.unlink()
        self.log.event(kind="finished", stages=[s.name for s in self.manifest.stages])


def train(run_dir: str | Path) -> Trainer:
    """Run (or resume) every stage of RUN's manifest; returns the trainer with the trained model."""
    world = init_world()
    try:
        trainer = Trainer(Path(run_dir), world)
        if not trainer.manifest.stages:
            raise MmcoreError(f"{run_dir}/manifest.toml: no [[stages]] to train; add one")
        for index, stage in enumerate(trainer.manifest.stages):
            if index < trainer.state.stage_index:
                continue
            trainer.run_stage(index, stage)
        trainer.finish()
        if world.is_main and trainer.manifest.eval.datasets:
            from mmcore.eval import evaluate_run

            results = evaluate_run(trainer.run_dir)  # from RUN/weights, as a user would load them
            trainer.log.event(kind="eval", results=results)
            print(json.dumps(results, indent=2))
        return trainer
    finally:
        close_world(world)
