#!/usr/bin/env bash
# One training run on a lent GPU machine (docs/training.md, "On a lent GPU"), from the
# repository root with .gpu-shard/ and .whl/ carried (scripts/prepare_gpu_run.sh makes them):
# installs the few wheels the GPU image lacks, unpacks the shard into runs/gpu-data, trains
# configs/train_lite0_gpu.yaml until its time limit and copies the newest checkpoint's model,
# loss history and curve, and the log, to $OUT (runs/gpu-out where OUT is unset).
# Arguments go to `stm-label train`: `--set use_gpu=false --set steps=2` tries it on a CPU.
# SHARD and GPU_DATA name other shard and data folders (the config's data paths then need --set).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu-out}
python=${PYTHON:-python3}
config=configs/train_lite0_gpu.yaml
mkdir -p "$out"
if ! "$python" -c 'import pydantic, pycocotools' 2>/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
    export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$python" -m jobs.cli unpack-shard "${SHARD:-.gpu-shard}" "${GPU_DATA:-runs/gpu-data}"
"$python" -m jobs.cli train --local --config "$config" "$@" 2>&1 | tee "$out/train.log"
run_dir=$("$python" - "$config" "$@" <<'PY'
import sys
from pathlib import Path

from jobs.cli import build_parser
from schemas.common import load_config
from schemas.training import TrainConfig

args = build_parser().parse_args(["train", "--local", "--config", *sys.argv[1:]])
config = load_config(TrainConfig, args.config, args.set or [])
print(Path(config.storage_path) / config.name)
PY
)
newest=$(ls -d "$run_dir"/checkpoint_* | tail -1)
cp "$newest/model.pt" "$newest/history.json" "$newest/loss_curve.png" "$out/"
echo "newest checkpoint $newest copied to $out"
