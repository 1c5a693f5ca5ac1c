"""What first-frame fine-tuning costs next to the propagation it precedes.

For each of ``--videos`` held-out synthetic videos (432 x 240, 30 frames unless ``--frames``
says otherwise, 1-3 objects, as in the model card's evaluation) it times ``adapt_to_seeds``
with ``--steps`` steps and then ``propagate`` over the whole video with the adapted copy, both
with the shipped model (or ``--checkpoint``). Reported: the median seconds of one adaptation,
per adaptation step, and of one whole-video propagation, and their ratio. Adaptation costs the
same for a 30-frame and a 3,000-frame video; propagation grows with the frame count, so the
ratio is this video length's.

Usage, from the repository root: ``python -m benchmarks.bench_adaptation [--steps 30]
[--crop frame|HxW] [--videos 5] [--frames 30] [--threads N] [--checkpoint PATH]
[--out PATH]``. Writes JSON (default ``benchmarks/results/adaptation.json``) and prints a
table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    checkpoint_identity,
    default_out,
    format_table,
    machine_info,
    median,
    write_json,
)
from stm_core import load_model, propagate
from stm_core.adaptation import Adaptation, adapt_to_seeds, parse_crop
from stm_core.assets import default_checkpoint_path
from stm_core.training.heldout import heldout_videos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=Adaptation.steps)
    parser.add_argument("--videos", type=int, default=5)
    parser.add_argument("--frames", type=int, default=30, help="frames per video")
    parser.add_argument("--crop", default="frame", help="clip size: 'frame' or HxW")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: shipped model")
    parser.add_argument("--out", type=Path, default=default_out("adaptation"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or default_checkpoint_path()
    if checkpoint is None:
        raise SystemExit("no --checkpoint given and this installation ships no model")
    model = load_model(checkpoint, device="cpu")
    adaptation = Adaptation(steps=args.steps, crop=parse_crop(args.crop))
    rows, adapt_s, propagate_s = [], [], []
    for video in heldout_videos(args.videos, args.frames, seed_base=0):
        seeds = {0: video.masks[0]}
        start = time.perf_counter()
        tuned = adapt_to_seeds(model, {0: video.frames[0]}, seeds, adaptation)
        adapted = time.perf_counter() - start
        start = time.perf_counter()
        for _ in propagate(tuned, video.frames, seeds):
            pass
        propagated = time.perf_counter() - start
        adapt_s.append(adapted)
        propagate_s.append(propagated)
        objects = int(np.count_nonzero(np.bincount(video.masks[0].ravel())[1:]))
        rows.append([video.name, objects, f"{adapted:.2f}", f"{propagated:.2f}"])
        print(f"{video.name}: adapt {adapted:.2f} s, propagate {propagated:.2f} s", flush=True)
    result = {
        **machine_info(("numpy", "torch")),
        "threads": torch.get_num_threads(),
        "checkpoint": checkpoint_identity(checkpoint),
        "adaptation": dataclasses.asdict(adaptation),
        "frames_per_video": args.frames,
        "frame_size": [240, 432],
        "videos": [
            {"name": r[0], "objects": r[1], "adapt_seconds": a, "propagate_seconds": p}
            for r, a, p in zip(rows, adapt_s, propagate_s, strict=True)
        ],
        "median_adapt_seconds": median(adapt_s),
        "median_seconds_per_step": median(adapt_s) / max(args.steps, 1),
        "median_propagate_seconds": median(propagate_s),
        "adapt_to_propagate_ratio": median(adapt_s) / median(propagate_s),
    }
    write_json(args.out, result)
    header = ["video", "objects", "adapt s", f"propagate s ({args.frames} frames)"]
    print(format_table(header, rows))
    print(
        f"median: adaptation {result['median_adapt_seconds']:.2f} s "
        f"({result['median_seconds_per_step']:.3f} s/step), propagation "
        f"{result['median_propagate_seconds']:.2f} s, "
        f"ratio {result['adapt_to_propagate_ratio']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
