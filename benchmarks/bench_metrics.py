"""How long J&F takes on a 100-frame 480p sequence with 2 objects.

The target (from the issue): "well under a second per object" for 100 frames at 480p. The
sequence is synthetic: two ellipses that move and change size; the prediction is the ground truth
shifted by a few pixels with some pixels flipped near the objects, so boundaries are neither empty
nor identical and every code path of F runs.

Usage, from the repository root: ``python -m benchmarks.bench_metrics [--frames 100] [--repeats 5]
[--out PATH]``. Writes JSON (default ``benchmarks/results/metrics.json``) and prints a table. The
1-minute load average goes into the JSON too: on a shared machine it explains slow runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import default_out, format_table, machine_info, median, write_json
from stm_core.metrics import evaluate_sequence

HEIGHT, WIDTH = 480, 854
N_OBJECTS = 2
DEFAULT_OUT = default_out("metrics")


def synthetic_sequence(n_frames: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(pred, gt)``: lists of ``HEIGHT x WIDTH`` uint8 label maps with objects 1 and 2."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    pred, gt = [], []
    for t in range(n_frames):
        labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        for k, (cy, cx, ry, rx, vx) in enumerate(
            ((200, 250, 110, 160, 2.0), (300, 600, 80, 120, -1.5)), start=1
        ):
            ry_t, rx_t = ry * (1 + 0.1 * np.sin(t / 9)), rx * (1 + 0.1 * np.cos(t / 7))
            inside = ((rows - cy) / ry_t) ** 2 + ((cols - cx - vx * t) / rx_t) ** 2 < 1
            labels[inside] = k
        gt.append(labels)
        shifted = np.roll(labels, (int(rng.integers(-4, 5)), int(rng.integers(-6, 7))), (0, 1))
        noise = (rng.random((HEIGHT, WIDTH)) < 0.002) & (shifted > 0)
        shifted[noise] = 0
        pred.append(shifted)
    return pred, gt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    pred, gt = synthetic_sequence(args.frames)
    evaluate_sequence(pred, gt)  # warm-up: first-touch page faults, lazy imports
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scores = evaluate_sequence(pred, gt)
        times.append(time.perf_counter() - start)

    median_s = median(times)
    result = {
        "benchmark": "metrics.evaluate_sequence",
        "frames": args.frames,
        "scored_frames": args.frames - 2,
        "height": HEIGHT,
        "width": WIDTH,
        "objects": N_OBJECTS,
        "repeats": args.repeats,
        "seconds": times,
        "median_seconds": median_s,
        "median_seconds_per_object": median_s / N_OBJECTS,
        "target_seconds_per_object": 1.0,
        "j_and_f": scores.j_and_f,
        **machine_info(),
    }
    write_json(args.out, result)

    rows = [
        ("frames x size", f"{args.frames} x {WIDTH}x{HEIGHT}"),
        ("objects", str(N_OBJECTS)),
        ("repeats", str(args.repeats)),
        ("median total (s)", f"{median_s:.3f}"),
        ("min / max (s)", f"{min(times):.3f} / {max(times):.3f}"),
        ("median per object (s)", f"{median_s / N_OBJECTS:.3f}"),
        ("target per object (s)", "< 1.0"),
        ("J&F (sanity)", f"{100 * scores.j_and_f:.1f}"),
    ]
    print(format_table(("measure", "value"), rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
