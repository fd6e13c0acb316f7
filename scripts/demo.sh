#!/usr/bin/env bash
# Set up, then the main job on the embedded default (examples/tiny.toml): assemble → train (two stages)
# → eval on held-out scenes → a sample answer about a held-out image.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
rm -rf runs/tiny
.venv/bin/mmcore assemble examples/tiny.toml -o runs/tiny
.venv/bin/mmcore train runs/tiny
.venv/bin/python - <<'PY'
from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
from mmcore.kinds import BuildContext

sample = SyntheticShapes(ShapesConfig(split="test", size=1, tasks=["vqa/colour"]), BuildContext(name="demo"))[0]
sample.media["image"][0].save("runs/tiny/example.png")
question = sample.conversation[0].text.split("\n")[-1]
open("runs/tiny/question.txt", "w").write(question)
print(f"held-out image runs/tiny/example.png — {question} (reference: {sample.conversation[1].text})")
PY
.venv/bin/mmcore generate runs/tiny --image runs/tiny/example.png --prompt "$(cat runs/tiny/question.txt)"
