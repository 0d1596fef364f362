#!/usr/bin/env bash
# The whole test suite: the static checks (import contracts, declared
# dependencies, types), then unit tests and integration tests against the real
# libvirtd (qemu:///system, TCG) and dockerd, which scripts/install.sh sets up.
# Any check that fails ends the run with its exit code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== lint-imports"
.venv/bin/lint-imports
echo "== deptry"
.venv/bin/deptry .
echo "== mypy"
.venv/bin/mypy --strict somnus_reconciler
echo "== ansible-lint"
# Profile, offline mode and the extra vars of pack.yml's syntax check are in
# .ansible-lint. The venv's bin on PATH: ansible-lint runs ansible-playbook from it.
PATH="$PWD/.venv/bin:$PATH" .venv/bin/ansible-lint playbooks/ capability_packs/playbooks/
echo "== pytest"
# --durations: the 15 slowest tests; the summary line gives the suite's time.
exec .venv/bin/python -m pytest -p no:cacheprovider -q --durations=15 "$@"
