"""What the frozen-feature cache saves: training-step time of the tiny u-LLaVA with `cache_features = true` on its
CLIP and its SAM head vs without, side by side in one process, and the cache's disk size per image.

The model is examples/ullava-tiny.toml (CLIP → linear → tiny Llama, [SEG] → SAM mask head, [LOC] → box head,
stage "seg": LLM, projector and heads train; CLIP and SAM's image encoder stay frozen as in u-LLaVA) with its
SAM image encoder made the size where it dominates a step, as ViT-H does in u-LLaVA (`--sam`, default vit_b's
encoder at 512 px). Steps run over the same batches of synthetic-shapes `res` samples (one distinct image
each), the model without a cache and the one with it stepping in turn: epoch 1 computes and writes the cache,
later epochs read it back. Keys are hashed where data-loader workers hash them (while the batches are built),
so that cost is reported apart.

    .venv/bin/python benchmarks/feature_cache.py [--sam vit_b-512|vit_b|tiny] [--batches N] [--batch-size B]
                                                 [--epochs E]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

SAM_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},  # the example's own
    "vit_b-512": {"preset": "vit_b", "image_size": 512, "patch_size": 16, "encoder_width": 768, "encoder_depth": 12,
                  "encoder_heads": 12, "global_attn_layers": [2, 5, 8, 11]},
    "vit_b": {"preset": "vit_b", "image_size": 1024, "patch_size": 16, "encoder_width": 768, "encoder_depth": 12,
              "encoder_heads": 12, "global_attn_layers": [2, 5, 8, 11]},
}


def _manifest(source: Path, sam: str, cached: bool) -> str:
    """The example's model and its first stage, the SAM encoder resized, `cache_features` on CLIP and SAM."""
    from mmcore.manifest._toml import toml_value

    data = tomllib.loads(source.read_text())
    model = data["model"]
    seg = {k: v for k, v in model["heads"]["seg"].items() if k not in SAM_SIZES["vit_b"]} if sam != "tiny" else \
        dict(model["heads"]["seg"])
    seg.update(SAM_SIZES[sam])
    tables: dict[str, dict[str, Any]] = {
        "model": {"max_length": model["max_length"]}, "model.llm": model["llm"],
        "model.encoders.vision": {**model["encoders"]["vision"], "cache_features": cached},
        "model.projectors.vision": model["projectors"]["vision"],
        "model.heads.seg": {**seg, "cache_features": cached}, "model.heads.loc": model["heads"]["loc"],
        "data.datasets.res": data["data"]["datasets"]["res"],
    }
    body = "seed = 0\n\n"
    for name, table in tables.items():
        values = {k: v for k, v in table.items() if not isinstance(v, dict)}
        inline = {k: v for k, v in table.items() if isinstance(v, dict)}
        body += f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
        for key, sub in inline.items():
            body += f"{key} = {{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in sub.items()) + " }\n"
        body += "\n"
    stage = data["stages"][0]
    return body + (f"[[stages]]\nname = {toml_value(stage['name'])}\ntrainable = {toml_value(stage['trainable'])}\n"
                   f"template = {toml_value(stage['template'])}\ndatasets = [\"res\"]\n")


def _model(run_dir: Path, text: str) -> tuple[Any, Any, list[torch.nn.Parameter]]:
    """The run's model with the stage's trainable rule applied, its assembly, and the trainable parameters."""
    from mmcore.assembly import assemble, trainable_names
    from mmcore.run import Run

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir.parent / f"{run_dir.name}.toml").write_text(text)
    run = Run.create(run_dir, assemble(run_dir.parent / f"{run_dir.name}.toml"))
    assembly = run.assemble("cpu")
    model = assembly.model.train()
    stage = assembly.loaded.manifest.stages[0]
    modules = model.components()
    model.requires_grad_(False)
    for name, found in trainable_names(modules, assembly.loaded.manifest, stage).items():
        for pname, param in modules[name].named_parameters():
            param.requires_grad_(pname in set(found))
    return model, assembly, [p for p in model.parameters() if p.requires_grad]


def _batches(assembly: Any, model: Any, count: int, size: int) -> tuple[list[Any], float]:
    """`count` training batches of `size` res samples, and the seconds their views spent hashing keys."""
    from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
    from mmcore.cache import KeyedView
    from mmcore.data import Processor
    from mmcore.kinds import BuildContext

    stage = assembly.loaded.manifest.stages[0]
    processor = Processor.for_model(model, assembly.max_length, {stage.template: assembly.template(stage.template)})
    data = SyntheticShapes(ShapesConfig(size=count * size, tasks=["res"], image_size=64), BuildContext(name="s"))
    samples = [data[i] for i in range(count * size)]
    batches = [processor.batch(samples[i * size:(i + 1) * size], stage.template, train=True) for i in range(count)]
    hashing = 0.0
    for consumers in processor.consumers.values():
        for _, view in consumers:
            if isinstance(view, KeyedView):
                for sample in samples:
                    start = time.perf_counter()
                    view(sample.media["image"][0], "image")
                    keyed = time.perf_counter() - start
                    start = time.perf_counter()
                    view.inner(sample.media["image"][0], "image")
                    hashing += max(0.0, keyed - (time.perf_counter() - start))
    return batches, hashing / len(samples)


def _step(model: Any, optimizer: torch.optim.Optimizer, batch: Any) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def _clock(module: torch.nn.Module) -> list[float]:
    """Hooks that add `module`'s forward time to the returned list (sum it, then clear it)."""
    spent: list[float] = []
    module.register_forward_pre_hook(lambda m, a: spent.append(-time.perf_counter()))
    module.register_forward_hook(lambda m, a, o: spent.append(time.perf_counter()))
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", choices=list(SAM_SIZES), default="vit_b-512")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--example", type=Path, default=Path("examples/ullava-tiny.toml"))
    parser.add_argument("--runs", type=Path, default=Path("runs/feature-cache-bench"))
    args = parser.parse_args()
    torch.manual_seed(0)
    plain, _, plain_params = _model(args.runs / "plain", _manifest(args.example, args.sam, cached=False))
    cached, assembly, cached_params = _model(args.runs / "cached", _manifest(args.example, args.sam, cached=True))
    batches, hashing = _batches(assembly, cached, args.batches, args.batch_size)
    optimizers = {"plain": torch.optim.AdamW(plain_params, lr=1e-5),
                  "cached": torch.optim.AdamW(cached_params, lr=1e-5)}
    _step(plain, optimizers["plain"], batches[0])  # warm-up (allocations, first-call costs), not timed
    sam_clock, sam_shares = _clock(plain.heads["seg"].image_encoder), []
    times: dict[str, list[float]] = {"no cache": [], "cache, epoch 1 (write)": [], "cache, epochs 2+ (read)": []}
    for epoch in range(args.epochs):  # the two models step in turn over the same batches: same machine load
        for batch in batches:
            sam_clock.clear()
            times["no cache"].append(_step(plain, optimizers["plain"], batch))
            sam_shares.append(sum(sam_clock) / times["no cache"][-1])
            times["cache, epoch 1 (write)" if epoch == 0 else "cache, epochs 2+ (read)"].append(
                _step(cached, optimizers["cached"], batch))
    base = statistics.median(times["no cache"])
    print(f"tiny u-LLaVA, SAM image encoder {args.sam}, {args.batches} batches of {args.batch_size} images "
          f"(one [SEG] and one [LOC] each), CPU threads {torch.get_num_threads()}")
    print(f"{'training step':26s} {'median s':>9s} {'vs no cache':>12s}")
    for name, values in times.items():
        print(f"{name:26s} {statistics.median(values):9.3f} {statistics.median(values) / base:12.3f}")
    print(f"SAM image encoder in an uncached step: {statistics.median(sam_shares):.0%} of its time (median)")
    for name in ("heads.seg", "encoders.vision"):
        cache = cached.components()[name].feature_cache
        entries, size = cache.entries(), cache.disk_bytes()
        print(f"cache {name:16s} {entries} entries, {size / max(entries, 1) / 1024:.1f} KiB per image, "
              f"stats {dict(cache.stats)}")
    print(f"key hashing in the data workers: {hashing * 1000:.1f} ms per image (all keyed views)")


if __name__ == "__main__":
    main()
