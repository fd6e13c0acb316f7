#!/usr/bin/env bash
# Create .venv with the one pinned environment (constraints.txt), the core and the first-party plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -c constraints.txt torchvision deepspeed pycocotools -e ".[dev]" -e plugins/encoders/clip -e plugins/encoders/eva \
    -e plugins/projectors/mlp \
    -e plugins/projectors/c-abstractor -e plugins/projectors/d-abstractor -e plugins/heads/sam -e plugins/heads/box-decoder
# ImageBind-LLM: Meta's ImageBind model code WITHOUT its declared dependencies (they pull a torchaudio that breaks
# every transformers import, environment.md §0), then the plugins with what that code really needs
.venv/bin/pip install -q -c constraints.txt --no-deps imagebind-unofficial
.venv/bin/pip install -q -c constraints.txt -e plugins/encoders/imagebind -e plugins/projectors/bind-network \
    -e plugins/retrievers/cache
