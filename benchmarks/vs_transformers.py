"""mmcore vs transformers' LlavaForConditionalGeneration on the same weights, inputs and dtype.

One process, interleaved runs (ours/theirs, then theirs/ours, ...); ratios are medians of per-pair
ratios. The model: CLIP 4 layers × 256 at 112 px (64 image tokens), mlp2x_gelu, Llama 4 layers × 512
with a 32,064 vocabulary; batch 8, sequence 256; projector + LLM trainable, vision frozen (LLaVA
stage 2), AdamW. transformers' model is saved with save_pretrained and imported with `mmcore import
hf-llava`, so both hold the same tensors.

Bars (issue 4): train step time ratio ≤ 1.05, greedy generation throughput ratio (batch 8, 32 new
tokens) ≥ 0.95, training-step peak memory ratio ≤ 1.05. Peak memory: `torch.cuda.max_memory_allocated`
on a GPU; on CPU, the peak of the PyTorch profiler's memory timeline over one step.

    .venv/bin/python benchmarks/vs_transformers.py [--repeats 11] [--device cpu|cuda] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BATCH, SEQUENCE, NEW_TOKENS = 8, 256, 32


def build_hf_llava(folder: Path) -> None:
    from mmcore.testing import save_tiny_hf_llava

    vision = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
              "image_size": 112, "patch_size": 14}
    text = {"vocab_size": 32064, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
            "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 1024}
    save_tiny_hf_llava(folder, vision, text, image_tokens=64)


def samples(train: bool) -> list[Any]:
    """Batch 8 of one image each; training captions fill 256 tokens, prompts have mixed lengths."""
    import numpy as np
    from PIL import Image

    from mmcore.kinds import Sample, Turn

    rng = np.random.default_rng(0)
    out = []
    for i in range(BATCH):
        image = Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
        if train:  # plain template: BOS + 64 image tokens + caption + "\n" = 256
            caption = "".join(chr(97 + int(c)) for c in rng.integers(0, 26, SEQUENCE - 1 - 64 - 1))
            conversation = [Turn("user", "<image>"), Turn("assistant", caption)]
        else:
            conversation = [Turn("user", "<image>\n" + "describe this picture " * (2 + i))]
        out.append(Sample(id=str(i), conversation=conversation, media={"image": [image]}))
    return out


def median_time(step: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start


def peak_memory(step: Callable[[], Any], device: torch.device) -> float:
    """Peak bytes allocated during one call of `step` (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(row) for row in sizes) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from mmcore.interop import import_hf_llava
    from mmcore.pipeline import load

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    root = Path(tempfile.mkdtemp(prefix="mmcore-vs-hf-"))
    build_hf_llava(root / "hf")
    import_hf_llava(root / "hf", root / "run")
    pipeline = load(root / "run", device=str(device))
    ours = pipeline.model.to(dtype)
    theirs = LlavaForConditionalGeneration.from_pretrained(root / "hf", dtype=dtype,
                                                           attn_implementation="sdpa").to(device)
    for model, vision in ((ours, ours.encoders["vision"]), (theirs, theirs.model.vision_tower)):
        model.train()
        vision.requires_grad_(False)  # LLaVA stage 2: projector + LLM
    image_token = theirs.config.image_token_id

    train_batch = pipeline.processor.batch(samples(train=True), "plain", train=True).to(device)
    assert train_batch.input_ids.shape == (BATCH, SEQUENCE), train_batch.input_ids.shape
    hf_ids = train_batch.input_ids.masked_fill(train_batch.media_token_index >= 0, image_token)
    views = train_batch.media["image"].views
    pixels = views["encoders.vision"] = views["encoders.vision"].to(dtype)
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
                  for name, m in (("mmcore", ours), ("transformers", theirs))}

    def step_ours() -> None:
        ours(train_batch).loss.backward()
        optimizers["mmcore"].step()
        optimizers["mmcore"].zero_grad(set_to_none=True)

    def step_theirs() -> None:
        theirs(input_ids=hf_ids, attention_mask=train_batch.attention_mask, pixel_values=pixels,
               labels=train_batch.labels).loss.backward()
        optimizers["transformers"].step()
        optimizers["transformers"].zero_grad(set_to_none=True)

    gen_batch = pipeline.processor.batch(samples(train=False), "vicuna_v1", train=False).to(device)
    gen_views = gen_batch.media["image"].views
    gen_pixels = gen_views["encoders.vision"] = gen_views["encoders.vision"].to(dtype)
    gen_ids = gen_batch.input_ids.masked_fill(gen_batch.media_token_index >= 0, image_token)
    options = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}

    def gen_ours() -> torch.Tensor:
        return ours.generate(gen_batch, **options)

    def gen_theirs() -> torch.Tensor:
        return theirs.generate(input_ids=gen_ids, attention_mask=gen_batch.attention_mask,
                               pixel_values=gen_pixels, pad_token_id=0, eos_token_id=2,
                               **options)[:, gen_ids.shape[1]:]

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"train mmcore": [], "train transformers": [],
                                     "gen mmcore": [], "gen transformers": []}
    for _ in range(2):  # warm-up
        step_ours(), step_theirs()
    for repeat in range(args.repeats):  # alternate who goes first, so neither inherits the other's state
        pair = [("train mmcore", step_ours), ("train transformers", step_theirs)]
        for key, fn in pair if repeat % 2 == 0 else pair[::-1]:
            times[key].append(median_time(fn, sync))
    ours.eval(), theirs.eval()
    with torch.no_grad():
        same = torch.equal(gen_ours(), gen_theirs())
        for repeat in range(args.repeats):
            pair = [("gen mmcore", gen_ours), ("gen transformers", gen_theirs)]
            for key, fn in pair if repeat % 2 == 0 else pair[::-1]:
                times[key].append(median_time(fn, sync))
    ours.train(), theirs.train()
    memory = {"mmcore": peak_memory(step_ours, device), "transformers": peak_memory(step_theirs, device)}

    median = {k: statistics.median(v) for k, v in times.items()}
    # the ratio is the median of the per-repeat ratios: a slow spell of the machine hits both sides of a pair
    pair_ratio = {kind: statistics.median(a / b for a, b in zip(times[f"{kind} mmcore"], times[f"{kind} transformers"],
                                                               strict=True)) for kind in ("train", "gen")}
    tokens = BATCH * NEW_TOKENS
    print(f"device {device}, {args.dtype}, threads {torch.get_num_threads()}, batch {BATCH}, sequence {SEQUENCE}, "
          f"repeats {args.repeats} (interleaved, alternating order; times are medians, ratios medians of pairs)")
    train_ratio = pair_ratio["train"]
    print(f"train step      mmcore {median['train mmcore'] * 1000:8.1f} ms   transformers "
          f"{median['train transformers'] * 1000:8.1f} ms   ratio {train_ratio:.3f}  (bar <= 1.05)")
    gen_ours_tps, gen_theirs_tps = tokens / median["gen mmcore"], tokens / median["gen transformers"]
    gen_ratio = 1 / pair_ratio["gen"]  # throughput: the inverse of the time ratio
    print(f"generation      mmcore {gen_ours_tps:8.1f} tok/s transformers {gen_theirs_tps:8.1f} tok/s "
          f"ratio {gen_ratio:.3f}  (bar >= 0.95)  identical tokens: {same}")
    memory_ratio = memory["mmcore"] / memory["transformers"]
    print(f"peak memory     mmcore {memory['mmcore']:8.1f} MiB  transformers {memory['transformers']:8.1f} MiB  "
          f"ratio {memory_ratio:.3f}  (bar <= 1.05)")
    ok = train_ratio <= 1.05 and gen_ratio >= 0.95 and memory_ratio <= 1.05 and same
    print("all bars met" if ok else "BAR MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
