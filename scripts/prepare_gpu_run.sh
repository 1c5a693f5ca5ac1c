#!/usr/bin/env bash
# Prepare what a lent GPU machine needs to train (docs/training.md, "On a lent GPU"), here,
# where ../shared/data/train and a package index can be reached:
#   .gpu-shard/  the training data packed small (H.264 videos, scaled photos; about 37 MB)
#   .whl/        wheels of the packages the GPU image lacks (pydantic, pycocotools), Python 3.12
# Both are ignored by git and travel as `carry`; the working tree, the shard and the wheels must
# stay under the lender's 64 MiB. Then, on the device:
#   run(command="bash scripts/train_on_gpu.sh", carry=[".gpu-shard", ".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
data=${TRAIN_DATA:-../shared/data/train}

if [ ! -f .gpu-shard/manifest.json ]; then
    "$python" -m jobs.cli pack-shard \
        --videos "$data/davis16-train" --resolution 360p \
        --photos "$data/static/ecssd" "$data/static/duts-tr" --photos-per-folder 400 \
        --out .gpu-shard --max-mb 38
fi

mkdir -p .whl
# Versions as installed here, for the GPU image's Python 3.12 (its torch, numpy, Pillow, PyYAML,
# SciPy, scikit-image, pyarrow and matplotlib are used as they are).
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    "pydantic==$("$python" -c 'import pydantic; print(pydantic.VERSION)')" \
    "pydantic_core==$("$python" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
    "annotated-types==$("$python" -m pip show annotated-types | sed -n 's/^Version: //p')" \
    "typing-inspection==$("$python" -m pip show typing-inspection | sed -n 's/^Version: //p')" \
    "typing_extensions==$("$python" -m pip show typing_extensions | sed -n 's/^Version: //p')" \
    "pycocotools==$("$python" -m pip show pycocotools | sed -n 's/^Version: //p')"

tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
extra=$(du -cb .gpu-shard .whl | tail -1 | cut -f1)
echo "working tree $((tree / 1000000)) MB + shard and wheels $((extra / 1000000)) MB" \
    "= $(((tree + extra) / 1000000)) MB of the 67 MB (64 MiB) a call may carry"
if [ $((tree + extra)) -gt 67108864 ]; then
    echo "too large to carry: pack fewer photos (--photos-per-folder)" >&2
    exit 1
fi
