#!/usr/bin/env bash
# Set up, assemble the embedded default (examples/tiny.toml) and ask it about an image.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/mmcore assemble examples/tiny.toml -o runs/tiny
.venv/bin/python -c "from PIL import Image; Image.new('RGB', (80, 48), (200, 40, 40)).save('runs/tiny/red.png')"
.venv/bin/mmcore generate runs/tiny --image runs/tiny/red.png --prompt "What colour is the shape?" --max-new-tokens 16
