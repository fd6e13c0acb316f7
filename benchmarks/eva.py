"""EVA forward: mmcore's `eva-vit` encoder vs timm's model built directly, same weights, one process.

Ours runs as the assembled model runs it (`apply_dtype_policy` + `run_in_policy`: the core's dtype policy);
timm's is `timm.create_model(...)` with the same overrides and weights — for fp16 / bf16 converted as
MiniGPT-v2's `convert_weights_to_fp16` does (Conv/Linear only) and run under autocast. Both return all tokens
(`select_feature = "cls_patch"`, no ln_vision), so max |diff| compares the whole output (0 expected).

Timing: interleaved pairs, alternating who goes first; the ratio is the median of per-pair ratios. Noise: the
same protocol between two identical timm models (an A/A control; its ratio should be 1) and the p10–p90 spread
of the per-pair ratios. Bar (issue 12): time ratio ≤ 1.02.

    .venv/bin/python benchmarks/eva.py                          # CPU: EVA-ViT-g width, 2 of 39 blocks, 224 px
    .venv/bin/python benchmarks/eva.py --depth 39 --image-size 448 --precision fp16 --device cuda   # MiniGPT-v2's
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def build(args: argparse.Namespace, device: torch.device) -> tuple[Any, nn.Module, nn.Module]:
    """(our encoder, timm's model, a second timm model for the A/A control), all holding the same weights."""
    import timm
    from mmcore_plugin_eva.encoder import EvaConfig, EvaEncoder
    from mmcore_plugin_eva.presets import timm_kwargs

    from mmcore.kinds import BuildContext

    config = EvaConfig(model="eva_vit_g", image_size=args.image_size, config={"depth": args.depth},
                       select_feature="cls_patch", precision=args.precision)
    torch.manual_seed(0)
    ours = EvaEncoder(config, BuildContext(name="vision")).eval()
    name, kwargs = timm_kwargs(config.model, config.image_size, config.config)
    references = []
    for _ in range(2):
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        model.load_state_dict(ours.visual_encoder.state_dict())
        if args.precision != "fp32":
            for module in model.modules():  # convert_weights_to_fp16
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    module.to(ours.compute_dtype)
        references.append(model.to(device))
    ours.apply_dtype_policy()  # what MultimodalModel does at assembly
    return ours.to(device), references[0], references[1]


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def pairs(first: Callable[[], Any], second: Callable[[], Any], repeats: int,
          sync: Callable[[], None]) -> list[tuple[float, float]]:
    """Per-pair times (first, second), alternating who runs first."""
    times = []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            a, b = timed(first, sync), timed(second, sync)
        else:
            b, a = timed(second, sync), timed(first, sync)
        times.append((a, b))
    return times


def spread(times: list[tuple[float, float]]) -> str:
    """Median and p10-p90 of the per-pair ratios; the ratio of the best times (load only ever adds time)."""
    ratios = sorted(a / b for a, b in times)
    low, high = ratios[len(ratios) // 10], ratios[-1 - len(ratios) // 10]
    best = min(a for a, _ in times) / min(b for _, b in times)
    return f"median {statistics.median(ratios):.3f}, p10-p90 {low:.3f}-{high:.3f}, best/best {best:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=2, help="blocks (EVA-ViT-g: 39)")
    parser.add_argument("--image-size", type=int, default=224, help="pixels (MiniGPT-v2: 448)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                        help="default: fp16 on cuda (upstream vit_precision), fp32 on cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    from mmcore.model import run_in_policy

    ours, timm_model, control = build(args, device)
    dtype = ours.compute_dtype
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1))
    pixels = pixels.to(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run_ours() -> torch.Tensor:
        return run_in_policy(ours, pixels, "image").tokens

    def run_timm(model: Any = timm_model) -> torch.Tensor:
        with autocast:
            return model.forward_features(pixels).float()

    with torch.no_grad():
        diff = (run_ours() - run_timm()).abs().max().item()
        for _ in range(2):  # warm-up
            run_ours(), run_timm(), run_timm(control)
        ratios = pairs(run_ours, run_timm, args.repeats, sync)
        control_ratios = pairs(lambda: run_timm(control), run_timm, args.repeats, sync)
        seconds = statistics.median(timed(run_timm, sync) for _ in range(3))
    tokens = ours.output_spec.num_tokens
    print(f"EVA-ViT-g width 1408, {args.depth} blocks, {args.image_size} px ({tokens} tokens), batch {args.batch}, "
          f"{args.precision}, {device}, threads {torch.get_num_threads()}, {args.repeats} interleaved pairs")
    print(f"max |diff| mmcore vs timm: {diff:.3g}  (0 expected)")
    print(f"timm forward: {seconds * 1000:.1f} ms")
    print(f"time ratio mmcore / timm:  {spread(ratios)}  (bar <= 1.02)")
    print(f"noise, timm / same timm:   {spread(control_ratios)}  (A/A control, 1 expected)")
    ok = diff == 0 and statistics.median(a / b for a, b in ratios) <= 1.02
    print("bar met" if ok else "BAR MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
