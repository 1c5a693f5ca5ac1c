"""Seconds per frame of ``stm_core.propagate`` at 480p for each trunk and object count.

What is timed: ``propagate(model, frames, {0: seed}, mem_every=5)`` over ``--frames`` frames; each
frame's time is the wall time of the generator's ``next()``, which covers encoding the previous
frame into memory (deferred by design), encoding the query, the memory read and the decoder for
every object, and converting the result to numpy. Frame 0 (the seed frame: nothing to segment) is
excluded; the median over the other frames is reported, with frames/s = 1 / median. Memory grows
over the run (permanent entries at 0, 5, 10, ... plus the previous frame), so this is the speed of
the first seconds of a video; ``bench_memory_growth`` covers long videos.

The weights are random (``torch.manual_seed(0)``): the network's cost is a fixed sequence of
dense convolutions and matrix products whose size depends on the frame size, trunk and number of
objects, not on the weight values, so trained weights take the same time. Frames are real (the
``blackswan`` clip of the shared DAVIS data, resized if ``--size`` is not 854x480) when present,
else random; the seed is ``k`` side-by-side boxes (see ``common.box_seed``).

Usage, from the repository root: ``python -m benchmarks.bench_propagation_speed [--frames 12]
[--trunks resnet50 resnet18] [--objects 1 2 4] [--threads N] [--out PATH]``. Writes JSON (default
``benchmarks/results/propagation_speed.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import (
    REAL_DATA_ROOT,
    box_seed,
    default_out,
    format_table,
    load_average,
    machine_info,
    median,
    parse_size,
    timed,
    write_json,
)
from stm_core import STM, propagate
from stm_core.io import read_frame

DEFAULT_OUT = default_out("propagation_speed")
DEFAULT_SEQUENCE = "blackswan"


def load_frames(
    n_frames: int, size: tuple[int, int], data_root: Path, sequence: str, random_frames: bool
) -> tuple[list[np.ndarray], str]:
    """``n_frames`` H x W x 3 uint8 frames and a description of where they came from.

    Real frames are repeated from the start if the clip is shorter than ``n_frames``; they are
    resized (bilinear) when ``size`` differs from the clip's. Holding a dozen 480p frames in a
    list (1.2 MB each) keeps disk reads and JPEG decoding out of the timings.
    """
    height, width = size
    folder = data_root / "JPEGImages" / "480p" / sequence
    paths = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if random_frames or not paths:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n_frames)]
        return frames, "random"
    frames = []
    for path in itertools.islice(itertools.cycle(paths), n_frames):
        frame = read_frame(path)
        if frame.shape[:2] != (height, width):
            frame = np.array(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
        frames.append(frame)
    return frames, f"real: {folder} ({len(paths)} frames, cycled)"


def time_one(
    model: STM, frames: list[np.ndarray], n_objects: int, mem_every: int
) -> dict[str, Any]:
    """Propagate a ``n_objects`` box seed through ``frames``; per-frame seconds without frame 0."""
    height, width = frames[0].shape[:2]
    seeds = {0: box_seed(height, width, n_objects)}
    seconds, finite = [], True
    start = time.perf_counter()
    for result, dt in timed(propagate(model, frames, seeds, mem_every=mem_every)):
        finite = finite and bool(np.isfinite(result.probs).all())
        if result.frame_index > 0:
            seconds.append(dt)
    total = time.perf_counter() - start
    med = median(seconds)
    return {
        "trunk": model.spec.name,
        "objects": n_objects,
        "timed_frames": len(seconds),
        "seconds_per_frame": seconds,
        "median_seconds_per_frame": med,
        "frames_per_second": 1.0 / med,
        "min_seconds_per_frame": min(seconds),
        "max_seconds_per_frame": max(seconds),
        "total_seconds_with_seed_frame": total,
        "probabilities_finite": finite,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12, help="frames per run, seed included")
    parser.add_argument("--trunks", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--size", type=parse_size, default=(480, 854), help="WxH, default 854x480")
    parser.add_argument("--mem-every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-root", type=Path, default=REAL_DATA_ROOT)
    parser.add_argument("--sequence", default=DEFAULT_SEQUENCE)
    parser.add_argument("--random-frames", action="store_true", help="ignore the real clips")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be >= 2 (frame 0 is the seed and is not timed)")

    torch.set_num_threads(args.threads)
    load_start = load_average()
    frames, source = load_frames(
        args.frames, args.size, args.data_root, args.sequence, args.random_frames
    )
    runs, specs = [], {}
    for trunk in args.trunks:
        torch.manual_seed(0)
        model = STM(trunk).eval()
        specs[trunk] = model.spec.to_dict()
        for k in args.objects:
            runs.append(time_one(model, frames, k, args.mem_every))
        del model

    height, width = args.size
    result = {
        "benchmark": "propagation_speed",
        "frames": args.frames,
        "timed_frames": args.frames - 1,
        "height": height,
        "width": width,
        "mem_every": args.mem_every,
        "max_memory_frames": None,
        "threads": args.threads,
        "frames_source": source,
        "seed": "side-by-side boxes, one per object, on frame 0",
        "weights": "random (torch.manual_seed(0)); speed does not depend on weight values",
        "trunk_specs": specs,
        "runs": runs,
        **machine_info(("numpy", "torch")),
        **{f"{k}_start": v for k, v in load_start.items()},
    }
    write_json(args.out, result)

    rows = [
        (
            r["trunk"],
            r["objects"],
            f"{r['median_seconds_per_frame']:.3f}",
            f"{r['frames_per_second']:.2f}",
            f"{r['min_seconds_per_frame']:.3f} / {r['max_seconds_per_frame']:.3f}",
        )
        for r in runs
    ]
    headers = ("trunk", "objects", "median s/frame", "frames/s", "min / max s/frame")
    print(
        f"{width}x{height}, {args.frames - 1} timed frames, mem_every={args.mem_every}, "
        f"{args.threads} threads, frames: {source}"
    )
    print(format_table(headers, rows))
    print(
        f"load average (1 min): {load_start['load_average_1min']:.2f} at start, "
        f"{result['load_average_1min']:.2f} at end, on {result['cpu_count']} CPUs"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
