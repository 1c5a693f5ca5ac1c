"""Training throughput of the Ray Train stage on CPU: 1 worker x N threads vs N workers x 1 thread.

Same total threads either way, so the comparison shows what data parallelism (DDP over gloo, one
process per worker) costs or gains against intra-op threading in one process; 1 worker x 1 thread
is the reference. Each setting is one ``pipeline.training.ray_trainer.fit`` of ``4 x window``
steps that reports (and checkpoints) every ``window`` steps; the worker times each window without
the checkpoint writes. The first window (model build, first-touch allocations, DDP set-up) is
warm-up; the throughput is the clips of the last three windows over their total time, and over
the median window's time (robust to one window stalled by other processes). A "sample" is one
training clip of ``num_frames`` frames; its synthesis (``ClipDataset``, on the worker, inside the
step) counts, as it does in training.

Usage, from the repository root: ``python -m benchmarks.bench_training [--crop 128]
[--batch-size 2] [--window 4] [--settings 1x1 1x2 2x1] [--note TEXT] [--out PATH]``. Writes JSON
(default ``benchmarks/results/training.json``) and prints a table. On this shared 2-core machine,
pause other heavy work first; the load average is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import default_out, format_table, machine_info, median, write_json

log = logging.getLogger("bench_training")

MEASURED_WINDOWS = 3  # fit keeps the newest 3 checkpoints, hence the newest 3 reports' metrics


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_setting(text: str) -> tuple[int, int]:
    """``"2x1"`` -> (2 workers, 1 thread each)."""
    try:
        workers, threads = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WORKERSxTHREADS, e.g. 2x1, got {text!r}"
        ) from None
    if workers < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"workers and threads must be >= 1, got {text!r}")
    return workers, threads


def measure(workers: int, threads: int, args: argparse.Namespace, storage: Path) -> dict[str, Any]:
    """One fit; -> throughput of the measured windows plus the per-window numbers."""
    from pipeline.training.ray_trainer import fit
    from schemas.training import TrainConfig

    config = TrainConfig(
        name=f"bench-{workers}x{threads}",
        stage="static",
        trunk=args.trunk,
        crop=(args.crop, args.crop),
        steps=(1 + MEASURED_WINDOWS) * args.window,
        batch_size=args.batch_size,
        warmup_steps=0,
        checkpoint_every=args.window,
        workers=workers,
        threads_per_worker=threads,
        storage_path=str(storage),
        data={"seed": 0},
    )
    start = time.perf_counter()
    result = fit(config)
    wall = time.perf_counter() - start
    reports = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["step"])
    expected = [(i + 2) * args.window for i in range(MEASURED_WINDOWS)]
    if [int(m["step"]) for m in reports] != expected:
        raise RuntimeError(f"expected reports at steps {expected}, got {reports}")
    clips_per_window = args.window * args.batch_size * workers
    seconds = [clips_per_window / m["samples_per_s"] for m in reports]
    clips = clips_per_window * MEASURED_WINDOWS
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "clips_per_step": args.batch_size * workers,
        "measured_steps": args.window * MEASURED_WINDOWS,
        "window_seconds": seconds,
        "samples_per_s": clips / sum(seconds),
        # One stalled window (another process holding the cores) drags the mean; the median
        # window shows the typical rate.
        "samples_per_s_median_window": clips_per_window / median(seconds),
        "seconds_per_step": sum(seconds) / (args.window * MEASURED_WINDOWS),
        "final_loss": result.metrics["loss"],
        "fit_wall_seconds": wall,
    }


def cpu_native_bf16() -> bool:
    import torch

    from stm_core.checkpoint import native_bf16

    return native_bf16(torch.device("cpu"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunk", default="resnet18", choices=["resnet18", "resnet50"])
    parser.add_argument("--crop", type=int, default=128, help="square crop side (multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=2, help="clips per worker per step")
    parser.add_argument("--window", type=int, default=4, help="steps per timed window")
    parser.add_argument(
        "--settings",
        type=parse_setting,
        nargs="+",
        default=[(1, 1), (1, 2), (2, 1)],
        metavar="WxT",
        help="workers x threads per worker, e.g. 1x2 2x1",
    )
    parser.add_argument("--note", default="", help="free text stored with the result")
    parser.add_argument("--out", type=Path, default=default_out("training"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import ray

    cpus = max(w * t for w, t in args.settings)
    # Ray Train V2's placement-group cleaner polls the state API; pointed at another local
    # cluster (or none, with the dashboard off) it can declare the controller dead and remove
    # the run's placement group. Give it this cluster's dashboard explicitly.
    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        log_to_driver=False,
    )
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-training-") as storage:
            for workers, threads in args.settings:
                log.info("measuring %d worker(s) x %d thread(s)", workers, threads)
                runs.append(measure(workers, threads, args, Path(storage)))
    finally:
        ray.shutdown()

    from schemas.training import TrainConfig

    defaults = TrainConfig()
    base = runs[0]["samples_per_s"]
    for run in runs:
        run["speedup_vs_first"] = run["samples_per_s"] / base
    result = {
        "benchmark": "training.ray_train_throughput",
        "stage": "static",
        "trunk": args.trunk,
        "crop": [args.crop, args.crop],
        "batch_size_per_worker": args.batch_size,
        "num_frames": defaults.num_frames,
        "max_objects": defaults.max_objects,
        # null in the config: autocast where the CPU computes bfloat16 natively (what the
        # workers resolved it to)
        "bf16": defaults.bf16 if defaults.bf16 is not None else cpu_native_bf16(),
        "window_steps": args.window,
        "warmup_steps": args.window,
        "ray_num_cpus": cpus,
        "note": args.note,
        "runs": runs,
        **machine_info(("torch", "ray", "numpy")),
    }
    write_json(args.out, result)

    rows = [
        (
            f"{r['workers']} x {r['threads_per_worker']}",
            r["clips_per_step"],
            r["measured_steps"],
            f"{r['seconds_per_step']:.2f}",
            f"{r['samples_per_s']:.2f}",
            f"{r['samples_per_s_median_window']:.2f}",
            f"{r['speedup_vs_first']:.2f}",
            f"{r['fit_wall_seconds']:.0f}",
        )
        for r in runs
    ]
    headers = (
        "workers x threads",
        "clips/step",
        "steps",
        "s/step",
        "clips/s",
        "clips/s (median window)",
        "vs first",
        "fit s",
    )
    print(
        f"{args.trunk}, crop {args.crop}, {args.batch_size} clip(s)/worker/step, "
        f"load avg {result['load_average_1min']:.1f} on {result['cpu_count']} CPUs"
    )
    print(format_table(headers, rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
