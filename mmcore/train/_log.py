"""Run logging: a progress bar on a terminal, plain progress lines otherwise (step, loss, lr, tokens/s,
ETA), JSON lines, loss-curve PNGs, TensorBoard."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError

__all__ = ["RunLog", "mean_terms"]


def mean_terms(terms: list[dict[str, float]]) -> dict[str, float]:
    """The loss terms of a step's micro-batches (this rank's) → each term's mean over those that had it."""
    sums: dict[str, list[float]] = {}
    for micro in terms:
        for key, value in micro.items():
            sums.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in sums.items()}


class RunLog:
    """Writes RUN/log.jsonl and RUN/plots/loss-<stage>.png; only the main rank writes."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.bar: Any = None
        self.losses: list[tuple[int, float]] = []
        self.tensorboard: Any = None
        self._tokens = 0
        self._since = time.perf_counter()
        self._first_step = 0
        self._steps = 0

    def event(self, **record: Any) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def start_stage(self, stage: str, start: int, steps: int, tensorboard: bool) -> None:
        self.losses = []
        self._tokens, self._since, self._first_step, self._steps = 0, time.perf_counter(), start, steps
        if not self.enabled:
            return
        if sys.stdout.isatty() and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start, desc=stage, file=sys.stderr, dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MmcoreError("tensorboard = true needs the tensorboard package: pip install tensorboard") from None
            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard" / stage))

    def step(self, stage: str, step: int, loss: float, lr: float, tokens: int, log: bool,
             terms: dict[str, float] | None = None) -> dict[str, float]:
        """`terms`: the loss's terms on their own ("lm", "heads.seg.bce", ...) when the model has heads."""
        self._tokens += tokens
        elapsed = max(time.perf_counter() - self._since, 1e-9)
        metrics = {"loss": loss, "lr": lr, "tokens_per_s": self._tokens / elapsed, **(terms or {})}
        parts = "".join(f" {key} {value:.4f}" for key, value in (terms or {}).items())
        self.losses.append((step, loss))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.4f}" for k, v in (terms or {}).items()},
                                 lr=f"{lr:.2e}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if log and self.enabled and self.bar is None:  # not a terminal: one plain line per logged step
            left = elapsed / max(step - self._first_step, 1) * (self._steps - step)
            print(f"[{stage}] step {step}/{self._steps} loss {loss:.4f}{parts} lr {lr:.2e} tok/s "
                  f"{metrics['tokens_per_s']:.0f} eta {time.strftime('%H:%M:%S', time.gmtime(left))}", flush=True)
        if log:
            self.event(kind="step", stage=stage, step=step, **metrics)
            if self.tensorboard is not None:
                for key, value in metrics.items():
                    self.tensorboard.add_scalar(key, value, step)
        return metrics

    def end_stage(self, stage: str, skipped: dict[str, int]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if not self.enabled:
            return
        self.event(kind="stage_end", stage=stage, skipped=skipped)
        if skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
            print(f"[{stage}] skipped records: {reasons}", file=sys.stderr)
        if self.losses:
            self._plot(stage)

    def _plot(self, stage: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, losses = zip(*self.losses, strict=True)
        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot(steps, losses, linewidth=1)
        axis.set(xlabel="step", ylabel="loss", title=f"stage {stage}")
        axis.grid(alpha=0.3)
        (self.run_dir / "plots").mkdir(exist_ok=True)
        figure.tight_layout()
        figure.savefig(self.run_dir / "plots" / f"loss-{stage}.png", dpi=100)
        plt.close(figure)
