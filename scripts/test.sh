#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: core tests and every plugin's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch-extensions}"  # DeepSpeed JIT ops, compiled once
.venv/bin/ruff check mmcore plugins tests benchmarks
.venv/bin/mypy mmcore plugins/encoders/clip/mmcore_plugin_clip plugins/projectors/mlp/mmcore_plugin_mlp \
    plugins/projectors/c-abstractor/mmcore_plugin_c_abstractor plugins/projectors/d-abstractor/mmcore_plugin_d_abstractor
.venv/bin/python -m pytest -q
