#!/usr/bin/env bash
# Create .venv and install chexcli with its test extras.
#
# torch is pinned to 2.13.0 (a CPU build) on purpose: it is small, imports
# without torchvision, and is the version the reference parity fixture was
# computed with. chexcli does not use torchvision or timm (the CLIP towers are
# compact modules of our own), so nothing forces the 6 GB CUDA build. On a GPU
# machine install the CUDA torch of your choice first; this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[test,serve]"
