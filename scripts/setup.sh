#!/usr/bin/env bash
# Create .venv with the one pinned environment (constraints.txt), the core and the first-party plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -c constraints.txt torchvision deepspeed -e ".[dev]" -e plugins/encoders/clip -e plugins/projectors/mlp \
    -e plugins/projectors/c-abstractor -e plugins/projectors/d-abstractor
