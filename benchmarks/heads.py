"""The tiny u-LLaVA (examples/ullava-tiny.toml) and what its heads cost (issue 11).

1. What it learns: held-out mask gIoU / cIoU and box Prec@0.5 (synthetic-shapes `res`, the `val` split of the
   manifest's [eval]), teacher-forced (u-LLaVA's protocol) and free-running (the triggers the model generates),
   untrained vs after `mmcore train`, with the training time.
2. SAM image-encoder calls per training step: a forward hook on the head's frozen image encoder during one
   training forward of `res-turns` samples (several [SEG] prompts per image) mixed with `refer` samples (none):
   images encoded = distinct images that have a prompt, whatever the number of prompts.
3. Batched mask inference: `Pipeline.answer(..., return_heads=True)` on 8 prompts at once vs 8 × batch 1 (median
   of interleaved repeats), and the SAM head alone on 8 images × 1 prompt vs 8 calls.

The frozen-feature cache's step time and disk size are `benchmarks/feature_cache.py`.

    .venv/bin/python benchmarks/heads.py [--manifest examples/ullava-tiny.toml] [--steps N] [--skip-train]
                                         [--box-normalisation ullava|mean] [--train-encoder] [--run DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _row(name: str, heads: dict[str, Any]) -> str:
    seg, loc = heads["seg"], heads["loc"]
    return (f"{name:<10} {seg['teacher_forced']['giou']:>8.3f} {seg['teacher_forced']['ciou']:>8.3f} "
            f"{loc['teacher_forced']['prec@0.5']:>8.3f} {seg['free_running']['giou']:>8.3f} "
            f"{seg['free_running']['ciou']:>8.3f} {loc['free_running']['prec@0.5']:>8.3f}")


def learning(manifest: Path, folder: Path, steps: int | None, skip_train: bool) -> Path:
    """Assemble, evaluate untrained, train, evaluate; print the table. Returns the run."""
    from mmcore.assembly import assemble
    from mmcore.eval import evaluate_run
    from mmcore.run import Run
    from mmcore.train import train

    text = manifest.read_text()
    if steps is not None:
        text = "\n".join(f"max_steps = {steps}" if line.startswith("max_steps") else line
                         for line in text.splitlines()) + "\n"
    (folder / manifest.name).write_text(text)
    run = Run.create(folder / "run", assemble(folder / manifest.name)).root
    before = evaluate_run(run)["val"]["heads"]
    if skip_train:
        print(_row("untrained", before))
        return run
    start = time.perf_counter()
    train(run)
    minutes = (time.perf_counter() - start) / 60
    after = evaluate_run(run)["val"]["heads"]
    print(f"\n{'held-out':<10} {'TF gIoU':>8} {'TF cIoU':>8} {'TF P@.5':>8} {'FR gIoU':>8} {'FR cIoU':>8} "
          f"{'FR P@.5':>8}   (TF teacher-forced, FR free-running; {int(after['seg']['teacher_forced']['masks'])} "
          f"masks / boxes)")
    print(_row("untrained", before))
    print(_row("trained", after))
    steps_done = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"step"' in line]
    print(f"training: {minutes:.1f} min for {steps_done[-1]['step']} steps (then the final eval); last logged terms: "
          + ", ".join(f"{k} {v:.3f}" for k, v in steps_done[-1].items() if k == "lm" or k.startswith("heads.")))
    print(f"free-running extra triggers: seg {after['seg']['extra_triggers']}, loc {after['loc']['extra_triggers']}")
    return run


def encoder_calls(pipeline: Any) -> None:
    """One training forward: image-encoder calls, images it encoded, prompts, samples."""
    from mmcore.builtins.datasets.shapes import SyntheticShapes
    from mmcore.errors import SampleError
    from mmcore.kinds import BuildContext

    data = SyntheticShapes(SyntheticShapes.Config(size=12, tasks=["res-turns", "refer"]), BuildContext(name="b"))
    samples, prepared = [], []
    for index in range(len(data)):  # the first 8 that fit [model] max_length (a 3-turn sample may not)
        try:
            prepared.append(pipeline.processor.prepare(data[index], pipeline.template, train=True))
            samples.append(data[index])
        except SampleError:
            continue
        if len(samples) == 8:
            break
    batch = pipeline.processor.collate(prepared, train=True)
    seen: list[int] = []
    encoder = pipeline.model.heads["seg"].image_encoder
    handle = encoder.register_forward_hook(lambda _m, args, _o: seen.append(int(args[0].shape[0])))
    try:
        pipeline.model.train()
        pipeline.model(batch)
    finally:
        handle.remove()
        pipeline.model.eval()
    prompts = sum(t.text.count("[SEG]") for s in samples for t in s.conversation)
    with_prompts = sum(any("[SEG]" in t.text for t in s.conversation) for s in samples)
    print(f"\nSAM image encoder in one training step: {len(seen)} call(s), {sum(seen)} image(s) encoded for {prompts} "
          f"[SEG] prompts over {len(samples)} samples ({with_prompts} images with a prompt, "
          f"{len(samples) - with_prompts} without)")


def _median_pair(first: Any, second: Any, repeats: int) -> tuple[float, float]:
    """Median times of two callables, interleaved (a slow spell hits both)."""
    times: list[list[float]] = [[], []]
    for index in range(repeats):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            start = time.perf_counter()
            (first, second)[which]()
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def batched_inference(pipeline: Any, repeats: int) -> None:
    """Batch 8 vs 8 × batch 1: whole answers with heads, and the SAM head alone."""
    from mmcore.builtins.datasets.shapes import SyntheticShapes
    from mmcore.kinds import BuildContext

    data = SyntheticShapes(SyntheticShapes.Config(split="test", size=8, tasks=["res"]), BuildContext(name="b"))
    samples = [data[i] for i in range(8)]
    prompts = [s.conversation[0].text for s in samples]
    images = [s.media["image"][0] for s in samples]
    options = {"max_new_tokens": 40, "return_heads": True}
    batched = pipeline.answer(prompts, images, **options)
    masks = sum(len(a.masks) for a in batched)
    together, alone = _median_pair(lambda: pipeline.answer(prompts, images, **options),
                                   lambda: [pipeline.answer(p, i, **options) for p, i in zip(prompts, images,
                                                                                             strict=True)], repeats)
    print(f"\nanswers with masks and boxes, 8 prompts ({masks} masks generated): batch 8 {together * 1000:.0f} ms, "
          f"8 × batch 1 {alone * 1000:.0f} ms — batch 8 takes {together / alone:.2f} of the time "
          f"({alone / together:.1f}× the throughput)")
    head = pipeline.model.heads["seg"]
    batch = pipeline.processor.batch([s for s in samples], pipeline.template, train=False)
    hidden = torch.randn(8, head.llm_hidden_size)
    rows = torch.arange(8)
    singles = [pipeline.processor.batch([s], pipeline.template, train=False) for s in samples]
    with torch.no_grad():
        together, alone = _median_pair(lambda: head(hidden, rows, batch.media, None),
                                       lambda: [head(hidden[i : i + 1], torch.zeros(1, dtype=torch.long), b.media,
                                                     None) for i, b in enumerate(singles)], repeats)
    print(f"SAM head alone, 8 images × 1 prompt: batch 8 {together * 1000:.1f} ms, 8 × batch 1 {alone * 1000:.1f} ms "
          f"— ratio {together / alone:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "examples" / "ullava-tiny.toml")
    parser.add_argument("--steps", type=int, help="override the stage's max_steps")
    parser.add_argument("--skip-train", action="store_true", help="only the untrained eval and the costs")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--box-normalisation", choices=["ullava", "mean"],
                        help="override the box head's loss_normalisation (the example: u-LLaVA's)")
    parser.add_argument("--train-encoder", action="store_true",
                        help="train the CLIP too (u-LLaVA keeps its pretrained CLIP frozen; here it is random)")
    parser.add_argument("--run", type=Path, help="measure the costs on this trained run (no training)")
    args = parser.parse_args()
    from mmcore.pipeline import load

    folder = Path(tempfile.mkdtemp(prefix="heads-bench-"))
    try:
        manifest = args.manifest.resolve()
        if args.box_normalisation or args.train_encoder:
            text = manifest.read_text()
            if args.box_normalisation:
                text = text.replace('loss_normalisation = "ullava"', f'loss_normalisation = "{args.box_normalisation}"')
            if args.train_encoder:
                text = text.replace('trainable = ["llm", "projectors", "heads"]',
                                    'trainable = ["llm", "projectors", "heads", "encoders"]')
            manifest = folder / "source" / manifest.name
            manifest.parent.mkdir()
            manifest.write_text(text)
        run = args.run or learning(manifest, folder, args.steps, args.skip_train)
        pipeline = load(run)
        encoder_calls(pipeline)
        batched_inference(pipeline, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
