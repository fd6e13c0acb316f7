"""Does a tiny model learn from video? Held-out accuracy on synthetic-shapes' `video/motion` ("Which way does the
red circle move?" → left / right / up / down, 8 of 8–16 frames) before and after a short training run.

The model is the embedded default's size (examples/tiny.toml: a 2-layer CLIP at 32 px, LLaVA's MLP, a 4-layer
Llama) with the CLIP taking `modalities = ["image", "video"]`: each video is 8 frames through CLIP, pooled as
u-LLaVA's `encode_video` into 8 temporal + 64 spatial tokens. The question names the shape but not the way it
moves, so a model that does not read the video's frame order scores at most chance (0.25): the frames of a
motion played backwards are the same frames, so the spatial tokens (a mean over frames) cannot tell left from
right; the temporal tokens, in order, can (a colour-ramp backdrop makes a frame's mean show where the shape
is). As in u-LLaVA the CLIP stays frozen (here a random one: no weights can be downloaded) and the projector and
LLM train; `cache_features = true` stores each video's pooled features under RUN/feature-cache/, so after the
first epoch CLIP no longer runs. `--train-encoder` trains the CLIP too (no cache then).

    .venv/bin/python benchmarks/video.py [--steps N] [--lr LR] [--train-encoder] [--run DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

CHANCE = 0.25
MANIFEST = """
seed = 0

[model]
max_length = 256

[model.llm]
type = "hf-causal-lm"
tokenizer = "byte-level"

[model.llm.config]
model_type = "llama"
vocab_size = 260
hidden_size = 128
intermediate_size = 256
num_hidden_layers = 4
num_attention_heads = 4
num_key_value_heads = 4
max_position_embeddings = 512

[model.encoders.vision]
type = "clip"
modalities = ["image", "video"]
video_frames = 8
cache_features = {cache}

[model.encoders.vision.config]
hidden_size = 64
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 4
image_size = 32
patch_size = 4

[model.projectors.vision]
type = "mlp"
depth = 2

[data]
num_workers = 1

[data.datasets.motion]
type = "synthetic-shapes"
split = "train"
size = {train_size}
image_size = 32
tasks = ["video/motion"]

[data.datasets.val]
type = "synthetic-shapes"
split = "val"
size = {val_size}
image_size = 32
tasks = ["video/motion"]

[[stages]]
name = "video"
trainable = {trainable}
template = "llama2"
datasets = ["motion"]
lr = {lr}
batch_size = 16
max_steps = {steps}

[eval]
datasets = ["val"]
batch_size = 32
max_new_tokens = 8
"""


def _accuracy(run: Path) -> tuple[float, Counter[str]]:
    """Exact-match accuracy of the held-out answers, and the answers given (RUN/eval/*/answers.jsonl)."""
    records = [json.loads(line) for path in (run / "eval").glob("*/answers.jsonl")
               for line in path.read_text().splitlines()]
    answers = [r["answer"].strip().strip(".").lower() for r in records]
    right = sum(a == r["reference"].strip().lower() for a, r in zip(answers, records, strict=True))
    return right / max(len(records), 1), Counter(a if a in ("left", "right", "up", "down") else "other"
                                                  for a in answers)


def _mmcore(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mmcore", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--train-encoder", action="store_true")
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--run", type=Path, default=Path("runs/video"))
    args = parser.parse_args()
    shutil.rmtree(args.run, ignore_errors=True)
    args.run.parent.mkdir(parents=True, exist_ok=True)
    manifest = args.run.parent / f"{args.run.name}.toml"
    trainable = '["encoders", "projectors", "llm"]' if args.train_encoder else '["projectors", "llm"]'
    manifest.write_text(MANIFEST.format(steps=args.steps, lr=args.lr, train_size=args.train_size,
                                        val_size=args.val_size, trainable=trainable,
                                        cache=str(not args.train_encoder).lower()))
    _mmcore("assemble", str(manifest), "-o", str(args.run))
    _mmcore("eval", str(args.run))  # no weights yet: the random-initialised model
    before, before_answers = _accuracy(args.run)
    shutil.rmtree(args.run / "eval")
    start = time.perf_counter()
    _mmcore("train", str(args.run))  # trains, then evaluates the [eval] dataset
    minutes = (time.perf_counter() - start) / 60
    after, after_answers = _accuracy(args.run)
    print(f"video/motion, {args.val_size} held-out videos, {args.steps} steps of batch 16 "
          f"({args.steps * 16 / args.train_size:.2f} epochs)")
    print(f"{'held-out accuracy':20s} {'untrained':>10s} {'trained':>10s} {'chance':>8s} {'trained / chance':>17s}")
    print(f"{'which way it moves':20s} {before:10.3f} {after:10.3f} {CHANCE:8.2f} {after / CHANCE:17.2f}")
    print(f"answers untrained: {dict(before_answers)}; trained: {dict(after_answers)}")
    cache = args.run / "feature-cache"
    entries = list(cache.rglob("*.safetensors")) if cache.is_dir() else []
    print(f"train + final eval: {minutes:.1f} min; CLIP {'trained' if args.train_encoder else 'frozen'}; feature "
          f"cache: {len(entries)} videos, {sum(p.stat().st_size for p in entries) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
