#!/usr/bin/env bash
# The main job: install everything, apply manifests/quickstart against the real
# libvirtd and dockerd, and show the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== somnus apply manifests/quickstart capability_packs"
somnus apply manifests/quickstart capability_packs -y
echo "== somnus get"
somnus get
echo "== somnus diff manifests/quickstart capability_packs (in sync: exit 0)"
somnus diff manifests/quickstart capability_packs
echo "== somnus describe vm/quickstart-vm (the in-guest agent: health and stats)"
somnus describe vm/quickstart-vm
