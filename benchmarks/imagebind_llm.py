"""The tiny ImageBind-LLM (examples/imagebind-llm-tiny.toml) and ImageBind's audio preprocessing (issue 13).

1. Held-out colour accuracy (synthetic-shapes `test` split, one shape per scene, 6 colours: chance 1/6) when
   the model is asked about the image alone (`vqa/colour`), the audio clip alone (`audio/colour`: a tone whose
   pitch names the colour) and both (`audiovisual/colour`: image and audio fused as Σ_m w_m·normalize(f_m)
   before the bind network), untrained vs after `mmcore train` (both stages), greedy answers.
2. Audio preprocessing throughput: clips per second (3 clips of 2 s per item: resample 44.1 → 16 kHz, Kaldi
   fbank, pad, normalise) in one process and in 2 worker processes (2 cores).

    .venv/bin/python benchmarks/imagebind_llm.py [--scenes 100] [--skip-train] [--audio-items 60]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"image": "vqa/colour", "audio": "audio/colour", "both": "audiovisual/colour"}


def accuracy(pipeline: Any, scenes: int, batch_size: int = 16) -> dict[str, float]:
    """Share of held-out questions whose answer starts with the right colour, per input kind."""
    from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
    from mmcore.kinds import BuildContext, Sample

    scores = {}
    for kind, task in TASKS.items():
        dataset = SyntheticShapes(ShapesConfig(split="test", size=scenes, max_shapes=1, tasks=[task]),
                                  BuildContext(name="test"))
        right = 0
        for first in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
            prompts = [Sample(s.id, s.conversation[:1], s.media, task=s.task) for s in samples]
            batch = pipeline.processor.batch(prompts, "alpaca", train=False)
            answers = pipeline.processor.decode(pipeline.model.generate(batch, max_new_tokens=8), "alpaca")
            right += sum(a.strip().lower().startswith(s.conversation[1].text) for a, s in zip(answers, samples,
                                                                                               strict=True))
        scores[kind] = right / len(dataset)
    return scores


def _preprocess(paths: list[Path]) -> int:
    from mmcore_plugin_imagebind.audio import AudioSettings
    from mmcore_plugin_imagebind.views import ImageBindView

    view = ImageBindView(AudioSettings())
    return sum(view(path, "audio")[0].shape[0] for path in paths)


def _worker(paths: list[Path]) -> None:
    """A data-loader worker: one torch thread (as torch's DataLoader sets), imports and kernels warm."""
    import torch

    torch.set_num_threads(1)
    _preprocess(paths)


def audio_throughput(items: int, folder: Path) -> dict[str, float]:
    """Clips/s of the audio view on 4.5 s 44.1 kHz stereo WAVs, in this process (torch's default threads) and in
    2 worker processes of one thread each (what 2 data-loader workers give)."""
    import wave

    paths = []
    rng = np.random.default_rng(0)
    for i in range(items):
        pcm = (rng.standard_normal((int(4.5 * 44100), 2)) * 3000).astype("<i2")
        path = folder / f"clip{i}.wav"
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(2)
            handle.setsampwidth(2)
            handle.setframerate(44100)
            handle.writeframes(pcm.tobytes())
        paths.append(path)
    _preprocess(paths[:2])  # warm up
    start = time.perf_counter()
    clips = _preprocess(paths)
    one = clips / (time.perf_counter() - start)
    with multiprocessing.get_context("spawn").Pool(2, initializer=_worker, initargs=(paths[:2],)) as pool:
        pool.map(_preprocess, [paths[:1], paths[1:2]], chunksize=1)  # both workers started and warm
        start = time.perf_counter()
        clips = sum(pool.map(_preprocess, [paths[0::2], paths[1::2]], chunksize=1))
        two = clips / (time.perf_counter() - start)
    return {"clips_per_s_1proc": round(one, 1), "clips_per_s_2proc": round(two, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--audio-items", type=int, default=60)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    import torch

    from mmcore.assembly import assemble
    from mmcore.pipeline import Pipeline
    from mmcore.run import Run
    from mmcore.train import train

    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp(prefix="ib-llm-"))
    try:
        print(f"audio preprocessing: {audio_throughput(args.audio_items, folder)}", flush=True)
        manifest = folder / "imagebind-llm-tiny.toml"
        shutil.copy(ROOT / "examples" / "imagebind-llm-tiny.toml", manifest)
        run = Run.create(folder / "run", assemble(manifest, require_data=True))
        untrained = run.assemble("cpu")
        pipeline = Pipeline(untrained.model.eval(), run.processor(untrained), "alpaca")
        before = accuracy(pipeline, args.scenes)
        print(f"untrained: {before}", flush=True)
        if args.skip_train:
            return
        start = time.perf_counter()
        train(folder / "run")
        minutes = (time.perf_counter() - start) / 60
        after = accuracy(run.pipeline(), args.scenes)
        print(f"trained ({minutes:.1f} min, 2 stages): {after}", flush=True)
        print(f"\nheld-out colour accuracy ({args.scenes} scenes each, chance 1/6)   untrained  trained")
        for kind in TASKS:
            print(f"  from {kind:<6}                                         {before[kind]:>8.3f}  {after[kind]:>7.3f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
