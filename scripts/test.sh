#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: core tests and every plugin's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch-extensions}"  # DeepSpeed JIT ops, compiled once
.venv/bin/ruff check mmcore plugins tests benchmarks
.venv/bin/mypy mmcore plugins/encoders/clip/mmcore_plugin_clip plugins/encoders/eva/mmcore_plugin_eva \
    plugins/projectors/mlp/mmcore_plugin_mlp \
    plugins/projectors/c-abstractor/mmcore_plugin_c_abstractor plugins/projectors/d-abstractor/mmcore_plugin_d_abstractor \
    plugins/heads/sam/mmcore_plugin_sam plugins/heads/box-decoder/mmcore_plugin_box_decoder \
    plugins/encoders/imagebind/mmcore_plugin_imagebind plugins/projectors/bind-network/mmcore_plugin_bind_network \
    plugins/retrievers/cache/mmcore_plugin_cache_retrieval
.venv/bin/python -m pytest -q
.venv/bin/python scripts/wheels.py  # every distribution as users get it: built, installed from wheels, tested
