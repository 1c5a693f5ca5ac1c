#!/usr/bin/env bash
# Set up from nothing, then run the corpus labeling job on its embedded demo corpus (a local
# Ray starts and stops by itself). Output: out/label-demo/output (masks/, errors/, runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python jobs/label_corpus.py "$@"
