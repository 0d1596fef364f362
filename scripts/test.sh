#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests against the real
# libvirtd (qemu:///system, TCG) and dockerd, which scripts/install.sh sets up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider -q "$@"
