#!/usr/bin/env bash
# Set up from nothing, then run the demo with the shipped model. Output lands in out/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/stm-label demo --out out/demo "$@"
