"""Seconds of one training step in float32 and under bfloat16 autocast, on this machine.

Why: bf16 autocast was the training default everywhere because it made steps 2-3x faster on
CPUs with AMX / AVX-512 BF16. On a CPU without them (AVX2 only) oneDNN emulates bfloat16 and the
same step is many times slower; the default is now chosen per device
(``stm_core.checkpoint.native_bf16``), and this benchmark is the measurement behind that choice.

One batch of random clips (``--batch`` clips of 3 frames, 3 objects, ``--crop`` square) through
:class:`stm_core.training.loop.Trainer` with a randomly initialised STM, one warm-up step, then
``--steps`` timed steps per mode. Usage, from the repository root:
``python -m benchmarks.bench_training_precision [--trunk efficientnet_lite0] [--crop 128]
[--steps 3] [--threads N] [--out PATH]``. Writes JSON (default
``benchmarks/results/training_precision.json``) and prints a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import default_out, format_table, machine_info, median, timed, write_json
from stm_core import STM
from stm_core.checkpoint import native_bf16
from stm_core.training.datasets import clip_item, collate_clips
from stm_core.training.loop import Trainer

MAX_OBJECTS = 3


def random_batch(crop: int, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random frames with three box objects per clip: the cost of a step does not depend on
    what the pixels show."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(batch):
        frames = rng.integers(0, 256, (3, crop, crop, 3), dtype=np.uint8)
        masks = np.zeros((3, crop, crop), np.int64)
        for obj in range(1, MAX_OBJECTS + 1):
            y, x = rng.integers(0, crop // 2, 2)
            masks[:, y : y + crop // 3, x : x + crop // 3] = obj
        items.append(clip_item(frames, masks))
    return collate_clips(items, MAX_OBJECTS)


def seconds_per_step(trunk: str, batch: dict[str, torch.Tensor], bf16: bool, steps: int) -> list:
    torch.manual_seed(0)
    trainer = Trainer(
        STM(trunk),
        lr=1e-4,
        weight_decay=1e-4,
        warmup_steps=1,
        total_steps=steps + 1,
        freeze_bn=True,
        device=torch.device("cpu"),
        bf16=bf16,
    )
    trainer.train_step(batch)  # warm-up: allocator, oneDNN kernels
    return [seconds for _, seconds in timed(trainer.train_step(batch) for _ in range(steps))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trunk", default="efficientnet_lite0")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=default_out("training_precision"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    batch = random_batch(args.crop, args.batch)
    runs = []
    for mode, bf16 in (("fp32", False), ("bf16", True)):
        times = seconds_per_step(args.trunk, batch, bf16, args.steps)
        runs.append({"mode": mode, "seconds_per_step": times, "median_s": median(times)})
    fp32 = runs[0]["median_s"]
    for run in runs:
        run["ratio_to_fp32"] = run["median_s"] / fp32
    result = {
        "benchmark": "training.step_precision",
        "trunk": args.trunk,
        "crop": [args.crop, args.crop],
        "batch_size": args.batch,
        "num_frames": 3,
        "max_objects": MAX_OBJECTS,
        "threads": torch.get_num_threads(),
        "native_bf16_cpu": native_bf16(torch.device("cpu")),
        "runs": runs,
        **machine_info(("torch", "numpy")),
    }
    write_json(args.out, result)
    rows = [(r["mode"], f"{r['median_s']:.2f}", f"{r['ratio_to_fp32']:.1f}x") for r in runs]
    print(format_table(("mode", "s/step (median)", "vs fp32"), rows))
    print(f"native bf16 on this CPU: {result['native_bf16_cpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
