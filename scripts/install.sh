#!/usr/bin/env bash
# Installs the host's daemons (scripts/setup-host.sh), then somnus itself into
# .venv with its dev extra, links /usr/local/bin/somnus, and builds the base images.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    python3 -m venv .venv
fi
echo "== installing somnus-reconciler into .venv"
.venv/bin/pip install --quiet --upgrade pip
# torch before the project: left to sentence-transformers (for `somnus triage`),
# pip would pick a torch build with gigabytes of CUDA; this pin is the CPU build.
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e '.[dev]'
ln -sf "$PWD/.venv/bin/somnus" /usr/local/bin/somnus
echo "== building base images (cached by recipe)"
.venv/bin/somnus image build
