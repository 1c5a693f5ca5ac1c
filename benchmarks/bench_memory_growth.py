"""Peak memory and seconds per frame over video length, with unbounded and capped STM memory.

The release keeps every ``mem_every``-th frame in memory forever (``max_memory_frames=None``), so
on long videos both the memory bank and the attention over it grow linearly with length. A cap
(``max_memory_frames=8``) keeps the seed frame plus the most recent permanent entries, so both
should stay flat. This benchmark measures the two curves at a small frame size so that a 5,000
frame video finishes on a CPU.

Each (length, policy) pair runs in a fresh Python subprocess, so one run's RSS peak or allocator
state never contaminates another's. In the subprocess: build ``STM(trunk)`` with random weights
(cost does not depend on weight values), run a 3-frame warm-up video (one-time kernel and
allocator set-up), then take the RSS baseline. The video is then driven through
``VideoSession.step`` (what ``stm_core.propagate`` calls per frame) so the bank's size can be read;
frames come from a generator (a random texture drifting one pixel per frame), never from a list.
After every frame: the step's wall time, the process RSS (psutil), ``bank.nbytes()`` (what the
entries hold) and ``bank.capacity_nbytes()`` (the preallocated buffers, at most about twice it).

Torch runs on one thread by default: the question here is the shape of the curves (does time or
memory grow with length?), and on a shared machine a multi-threaded step stalls whenever another
process holds a core (measured here under load ~9 on 2 cores: 1.58 s/frame with 2 threads against
0.055 s/frame with 1), which would drown the trend in noise. ``--threads`` changes it.

Reported per run: peak RSS growth over the baseline (MB, sampled per frame), the lifetime RSS
high-water mark (``ru_maxrss``, catches peaks inside a frame), peak memory-bank MB, and the
median seconds/frame over the first and the last ``--tail`` frames (frame 0, the seed, excluded).
Per policy: the ratio longest/shortest video of the last-frames s/frame, of the peak RSS growth
and of the peak bank size. A flat curve has ratios near 1.

Usage, from the repository root: ``python -m benchmarks.bench_memory_growth [--lengths 100 1000
5000] [--caps none 8] [--size 160x96] [--threads N] [--out PATH]``. Writes JSON (default
``benchmarks/results/memory_growth.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    box_seed,
    default_out,
    format_table,
    load_average,
    load_line,
    machine_info,
    median,
    parse_size,
    write_json,
)

DEFAULT_OUT = default_out("memory_growth")
REPO_ROOT = Path(__file__).resolve().parents[1]
WARMUP_FRAMES = 3
TRACE_POINTS = 20  # per run, for plotting RSS and time against frame index
MB = 1e6


def parse_cap(text: str) -> int | None:
    """``"none"`` -> None (the release's unbounded memory); otherwise a positive int."""
    if text.lower() == "none":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a cap must be >= 1 or 'none', got {text!r}")
    return value


def policy_name(cap: int | None) -> str:
    return "unbounded" if cap is None else f"cap {cap}"


def synthetic_frames(n_frames: int, height: int, width: int) -> Iterator[np.ndarray]:
    """``n_frames`` H x W x 3 uint8 frames, made one at a time: a fixed random texture rolled one
    pixel right per frame (content is irrelevant to cost; the roll keeps frames distinct)."""
    texture = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for t in range(n_frames):
        yield np.roll(texture, t, axis=1)


def measure(
    length: int,
    cap: int | None,
    size: tuple[int, int],
    trunk: str,
    n_objects: int,
    mem_every: int,
    threads: int,
    tail: int,
) -> dict[str, Any]:
    """One (length, policy) run in this process; see the module docstring for what is sampled.

    torch and psutil are imported here, not at the top, so the parent process that only starts
    workers and writes the table stays small.
    """
    import psutil
    import torch

    from stm_core import STM, VideoSession

    torch.set_num_threads(threads)
    process = psutil.Process()
    height, width = size
    seed = box_seed(height, width, n_objects)

    torch.manual_seed(0)
    model = STM(trunk).eval()
    rss_after_load = process.memory_info().rss
    warmup = VideoSession(model, mem_every=mem_every, max_memory_frames=cap)
    for t, frame in enumerate(synthetic_frames(WARMUP_FRAMES, height, width)):
        warmup.step(t, frame, seed if t == 0 else None)
    del warmup
    gc.collect()
    baseline = process.memory_info().rss

    session = VideoSession(model, mem_every=mem_every, max_memory_frames=cap)
    seconds: list[float] = []
    peak_rss, peak_bank, peak_buffers = baseline, 0, 0
    trace, every = [], max(1, length // TRACE_POINTS)
    start_all = time.perf_counter()
    for t, frame in enumerate(synthetic_frames(length, height, width)):
        start = time.perf_counter()
        session.step(t, frame, seed if t == 0 else None)
        seconds.append(time.perf_counter() - start)
        rss = process.memory_info().rss
        bank = session.bank.nbytes()
        peak_rss, peak_bank = max(peak_rss, rss), max(peak_bank, bank)
        peak_buffers = max(peak_buffers, session.bank.capacity_nbytes())
        if (t + 1) % every == 0 or t == length - 1:
            window = seconds[max(1, t + 1 - every) : t + 1] or seconds
            trace.append(
                {
                    "frame": t,
                    "rss_delta_mb": (rss - baseline) / MB,
                    "bank_mb": bank / MB,
                    "median_seconds_per_frame": median(window),
                }
            )
    wall = time.perf_counter() - start_all
    high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    propagated = seconds[1:]  # frame 0 is the seed: nothing to segment
    return {
        "length": length,
        "policy": policy_name(cap),
        "max_memory_frames": cap,
        "rss_after_load_mb": rss_after_load / MB,
        "rss_baseline_mb": baseline / MB,
        "peak_rss_delta_mb": (peak_rss - baseline) / MB,
        "ru_maxrss_mb": high_water / MB,
        "ru_maxrss_delta_mb": (high_water - baseline) / MB,
        "peak_bank_mb": peak_bank / MB,
        "peak_bank_buffers_mb": peak_buffers / MB,
        "final_permanent_entries": len(session.bank.permanent_frames),
        "median_seconds_per_frame_first": median(propagated[:tail]),
        "median_seconds_per_frame_last": median(propagated[-tail:]),
        "tail_frames": min(tail, len(propagated)),
        "wall_seconds": wall,
        "load_average_1min_end": os.getloadavg()[0],
        "trace": trace,
    }


def measure_in_process(args: argparse.Namespace, length: int, cap: int | None) -> dict[str, Any]:
    """:func:`measure` with the command line's settings."""
    return measure(
        length, cap, args.size, args.trunk, args.objects, args.mem_every, args.threads, args.tail
    )


def run_in_subprocess(args: argparse.Namespace, length: int, cap: int | None) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter and return its JSON (the last stdout line)."""
    width_height = f"{args.size[1]}x{args.size[0]}"
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_memory_growth",
        "--worker",
        "--lengths",
        str(length),
        "--caps",
        "none" if cap is None else str(cap),
        "--size",
        width_height,
        "--trunk",
        args.trunk,
        "--objects",
        str(args.objects),
        "--mem-every",
        str(args.mem_every),
        "--threads",
        str(args.threads),
        "--tail",
        str(args.tail),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"worker for length {length}, {policy_name(cap)} failed "
            f"(exit {done.returncode}):\n{done.stderr[-4000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per policy: longest-video value / shortest-video value of the growth measures."""
    out: dict[str, dict[str, Any]] = {}
    for policy in dict.fromkeys(r["policy"] for r in runs):
        mine = sorted((r for r in runs if r["policy"] == policy), key=lambda r: r["length"])
        first, last = mine[0], mine[-1]
        out[policy] = {
            "lengths": [first["length"], last["length"]],
            "seconds_per_frame_last": _ratio(first, last, "median_seconds_per_frame_last"),
            "peak_rss_delta": _ratio(first, last, "peak_rss_delta_mb"),
            "peak_bank": _ratio(first, last, "peak_bank_mb"),
        }
    return out


def _ratio(first: dict[str, Any], last: dict[str, Any], key: str) -> float | None:
    """``last[key] / first[key]``; None when the first is not positive (e.g. RSS did not grow)."""
    return last[key] / first[key] if first[key] > 0 else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _result(
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    started: float,
    load_start: dict[str, float],
) -> dict[str, Any]:
    """The JSON document of the runs so far (written after every run, so a long benchmark that
    is stopped keeps what it measured)."""
    summary = ratios(runs)
    height, width = args.size
    result = {
        "benchmark": "memory_growth",
        "height": height,
        "width": width,
        "trunk": args.trunk,
        "objects": args.objects,
        "mem_every": args.mem_every,
        "threads": args.threads,
        "tail_frames": args.tail,
        "driver": "VideoSession.step per frame (what stm_core.propagate runs), "
        + ("all runs in one process" if args.in_process else "a fresh subprocess per run")
        + f", RSS baseline after model load and a {WARMUP_FRAMES}-frame warm-up",
        "weights": "random (torch.manual_seed(0)); cost does not depend on weight values",
        "runs": runs,
        "ratios_longest_over_shortest": summary,
        "total_seconds": time.perf_counter() - started,
        **machine_info(("numpy", "torch", "psutil")),
        **{f"{k}_start": v for k, v in load_start.items()},
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[100, 1000, 5000])
    parser.add_argument("--caps", nargs="+", type=parse_cap, default=[None, 8])
    parser.add_argument("--size", type=parse_size, default=(96, 160), help="WxH, default 160x96")
    parser.add_argument("--trunk", default="resnet18")
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--mem-every", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: this measures the shape of the curves, and on a busy "
        "machine a multi-threaded step can be many times slower and far noisier)",
    )
    parser.add_argument("--tail", type=int, default=100, help="frames in the s/frame medians")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every (length, policy) in this process: faster to start, but one run's RSS "
        "peak and allocator state carry into the next (for smoke tests, not for numbers)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.lengths) < 2:
        parser.error("--lengths must be >= 2 (frame 0 is the seed and is not timed)")

    if args.worker:  # internal: one run, JSON on stdout for the parent
        print(json.dumps(measure_in_process(args, args.lengths[0], args.caps[0])))
        return 0

    load_start = load_average()
    started = time.perf_counter()
    runs = []
    for length in sorted(args.lengths):
        for cap in args.caps:
            if args.in_process:
                run = measure_in_process(args, length, cap)
            else:
                run = run_in_subprocess(args, length, cap)
            runs.append(run)
            write_json(args.out, _result(args, runs, started, load_start))  # kept if stopped
            print(
                f"  {length:>6} frames, {run['policy']:<9}: "
                f"{run['median_seconds_per_frame_last']:.4f} s/frame (last), "
                f"peak RSS +{run['peak_rss_delta_mb']:.1f} MB, bank {run['peak_bank_mb']:.2f} MB, "
                f"{run['wall_seconds']:.0f} s",
                flush=True,
            )
    result = _result(args, runs, started, load_start)
    write_json(args.out, result)
    summary = result["ratios_longest_over_shortest"]
    height, width = args.size

    headers = (
        "frames",
        "policy",
        "peak RSS delta (MB)",
        "peak bank (MB)",
        "bank buffers (MB)",
        "s/frame first",
        "s/frame last",
        "permanent entries",
    )
    rows = [
        (
            r["length"],
            r["policy"],
            f"{r['peak_rss_delta_mb']:.1f}",
            f"{r['peak_bank_mb']:.2f}",
            f"{r['peak_bank_buffers_mb']:.2f}",
            f"{r['median_seconds_per_frame_first']:.4f}",
            f"{r['median_seconds_per_frame_last']:.4f}",
            r["final_permanent_entries"],
        )
        for r in runs
    ]
    print(
        f"{width}x{height}, {args.trunk}, {args.objects} object(s), mem_every={args.mem_every}, "
        f"{args.threads} threads; s/frame = median over the first/last {args.tail} frames"
    )
    print(format_table(headers, rows))
    ratio_rows = [
        (
            policy,
            f"{r['lengths'][1]} / {r['lengths'][0]}",
            _fmt(r["seconds_per_frame_last"]),
            _fmt(r["peak_rss_delta"]),
            _fmt(r["peak_bank"]),
        )
        for policy, r in summary.items()
    ]
    print(
        format_table(("policy", "ratio of", "s/frame", "peak RSS delta", "peak bank"), ratio_rows)
    )
    print(f"{load_line(result)}; {result['total_seconds']:.0f} s in all")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
