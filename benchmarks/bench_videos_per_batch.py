"""Frames per second of one labeling actor's shard with 1, 2, 4 and 8 videos per batch.

What is timed: ``pipeline.label_shard.label_shard`` on one shard of ``--videos`` synthetic
videos, with ``LabelSettings.videos_per_batch`` = each of ``--batches``: reading the JPEG frames
and seeds from a local corpus, propagation (``stm_core.batch_propagation`` when > 1), RLE
encoding and writing the shard's Parquet files: what one actor does per shard. The model is
loaded before the clock starts and warmed up on one video (``--warmup``). frames/s = the
shard's frames / its wall time; each setting runs ``--repeats`` times (in turn, so slow drift
of the machine's load hits every setting alike) and the median is reported, with the speed-up
over one video per batch at the same precision. ``rows_equal`` is the share of mask rows whose
RLE equals that of one video per batch (1.0 = the same labels).

**Inputs.** ``--videos`` synthetic videos (``stm_core.training.synthetic_video``, held-out
split) of ``--frames`` frames at ``--size`` with ``--objects`` objects, all the same size so
every video of a batch shares one network call (videos of different sizes are batched by
size), written as a DAVIS folder (JPEG frames, a palette PNG seed on frame 0) in a temporary
folder. The model is ``--checkpoint`` (default: the shipped ``stm_lite0_real.pt``).

**Devices.** ``--device cuda`` runs the same on a GPU, ``--precisions fp32 bf16`` each autocast
mode; ``--ray`` also labels the shard through a Ray actor with ``num_gpus=1`` (the job's
``LabelWorker``, as ``run_label_job`` starts it; timed from the ``label`` call, the actor and
its model already up) for each setting; ``--ray-gpus 1`` tries that path on a CPU-only machine
(a logical GPU: the actor falls back to the CPU).

Usage, from the repository root: ``python -m benchmarks.bench_videos_per_batch [--batches 1 2 4
8] [--videos 8] [--frames 6] [--size 432x240] [--device cpu] [--precisions fp32] [--threads 1]
[--repeats 1] [--ray] [--out PATH]``. Writes JSON (default
``benchmarks/results/videos_per_batch.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from PIL import Image

from benchmarks.common import (
    checkpoint_identity,
    default_out,
    format_table,
    load_average,
    machine_info,
    median,
    parse_size,
    write_json,
)
from pipeline.corpus import VideoTask, discover
from pipeline.label_shard import LabelSettings, label_shard
from schemas.common import StorageOptions
from stm_core import STM, load_model
from stm_core.assets import default_checkpoint_path
from stm_core.propagation import PRECISIONS
from stm_core.training.synthetic_video import make_video

DEFAULT_OUT = default_out("videos_per_batch")
SHARD = "shard-00000"


def build_corpus(root: Path, videos: int, frames: int, size: tuple[int, int], objects: int) -> None:
    """A DAVIS folder under ``root``: ``v00, v01, ...`` of JPEG frames, frame 0's palette PNG."""
    for i in range(videos):
        video = make_video(i, frames, size, objects, split="heldout")
        images = root / "JPEGImages" / "480p" / f"v{i:02d}"
        masks = root / "Annotations" / "480p" / f"v{i:02d}"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for t, frame in enumerate(video.frames):
            Image.fromarray(frame).save(images / f"{t:05d}.jpg", quality=92)
        seed = Image.fromarray(video.masks[0], mode="P")
        seed.putpalette([0, 0, 0] + [255, 255, 255] * 255)
        seed.save(masks / "00000.png")


def settings_for(k: int, precision: str, args: argparse.Namespace, run: str) -> LabelSettings:
    return LabelSettings(
        run_id=run,
        checkpoint_id="bench",
        started_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        mem_every=args.mem_every,
        max_memory_frames=args.max_memory_frames,
        precision=precision,  # type: ignore[arg-type]
        videos_per_batch=k,
    )


def rles(output: Path) -> list[bytes]:
    """The RLE of every mask row the shard under ``output`` holds, in row order."""
    path = next((output / "masks").rglob("*.parquet"))
    return pq.read_table(path, columns=["rle"]).column("rle").to_pylist()


def time_local(
    model: STM, tasks: list[VideoTask], settings: LabelSettings, output: Path
) -> tuple[float, int]:
    """Seconds and frames of one ``label_shard`` call in this process."""
    start = time.perf_counter()
    summary = label_shard(model, SHARD, tasks, settings, str(output), StorageOptions())
    seconds = time.perf_counter() - start
    if summary.errors:
        raise RuntimeError(f"{summary.errors} videos failed: the benchmark's corpus is broken")
    return seconds, summary.frames


def time_ray(
    checkpoint: bytes, tasks: list[VideoTask], settings: LabelSettings, output: Path, threads: int
) -> tuple[float, int, str]:
    """Seconds and frames of one shard labeled by a ``LabelWorker`` actor with one GPU, and
    the torch device the actor ran on."""
    import ray

    from pipeline.label_actor import LabelWorker

    actor_class = ray.remote(num_gpus=1)(LabelWorker)
    actor = actor_class.remote(checkpoint, settings, str(output), StorageOptions(), threads)
    placement = ray.get(actor.placement.remote())  # up, model loaded
    start = time.perf_counter()
    summary = ray.get(actor.label.remote(SHARD, tasks))
    seconds = time.perf_counter() - start
    ray.kill(actor)
    return seconds, summary.frames, str(placement["device"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--videos", type=int, default=8, help="videos in the shard")
    parser.add_argument("--frames", type=int, default=6, help="frames per video")
    parser.add_argument("--size", type=parse_size, default=(240, 432), help="WxH, default 432x240")
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--mem-every", type=int, default=5)
    parser.add_argument("--max-memory-frames", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (median)")
    parser.add_argument("--warmup", type=int, default=1, help="videos labeled before timing")
    parser.add_argument("--ray", action="store_true", help="also through a num_gpus=1 actor")
    parser.add_argument(
        "--ray-gpus",
        type=int,
        default=None,
        help="GPUs Ray is told of (default: those torch sees); on a CPU-only machine, 1 makes "
        "a logical GPU whose actor runs on the CPU, to try the script before a GPU run",
    )
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        parser.error("no shipped model in this installation: pass --checkpoint")
    if min(args.batches) < 1 or args.videos < 1 or args.frames < 1 or args.repeats < 1:
        parser.error("--batches, --videos, --frames and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = load_average()
    model = load_model(args.checkpoint, device=args.device)
    device = next(model.parameters()).device
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-vpb-") as tmp:
        root = Path(tmp)
        build_corpus(root / "corpus", args.videos, args.frames, args.size, args.objects)
        found = discover(str(root / "corpus"))
        tasks = sorted(found.tasks, key=lambda t: t.video_id)
        if found.errors or len(tasks) != args.videos:
            raise RuntimeError(f"corpus discovery failed: {found.errors}")
        counter = itertools.count()

        def output() -> Path:
            return root / f"out-{next(counter)}"

        for precision in args.precisions:
            if args.warmup:
                warm = settings_for(1, precision, args, "warmup")
                time_local(model, tasks[: args.warmup], warm, output())
            settings = {k: settings_for(k, precision, args, f"k{k}") for k in args.batches}
            seconds: dict[int, list[float]] = {k: [] for k in args.batches}
            frames: dict[int, int] = {}
            rows: dict[int, list[bytes]] = {}
            for _ in range(args.repeats):
                for k in args.batches:
                    out = output()
                    secs, frames[k] = time_local(model, tasks, settings[k], out)
                    seconds[k].append(secs)
                    rows[k] = rles(out)
            for k in args.batches:
                runs.append(_run("local", precision, k, frames[k], seconds[k], rows))
        if args.ray:
            runs += _ray_runs(args, tasks, output)

    base = {(r["mode"], r["precision"]): r for r in runs if r["videos_per_batch"] == 1}
    for r in runs:
        one = base.get((r["mode"], r["precision"]))
        r["speedup_over_1"] = one and r["frames_per_second"] / one["frames_per_second"]
    result = {
        "benchmark": "videos_per_batch",
        "videos": args.videos,
        "frames_per_video": args.frames,
        "height": args.size[0],
        "width": args.size[1],
        "objects": args.objects,
        "mem_every": args.mem_every,
        "max_memory_frames": args.max_memory_frames,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": args.threads,
        "repeats": args.repeats,
        "frames_source": "stm_core.training.synthetic_video.make_video (heldout), JPEG q92",
        "runs": runs,
        **checkpoint_identity(args.checkpoint),
        **machine_info(("numpy", "torch", "ray")),
        **{f"{k}_start": v for k, v in load_start.items()},
    }
    write_json(args.out, result)
    print(render(result))
    print(f"wrote {args.out}")
    return 0


def _run(
    mode: str,
    precision: str,
    k: int,
    frames: int,
    seconds: list[float],
    rows: dict[int, list[bytes]],
) -> dict[str, Any]:
    reference = rows.get(1)
    equal = None
    if reference is not None and k in rows:
        same = sum(a == b for a, b in zip(reference, rows[k], strict=True))
        equal = same / len(reference)
    med = median(seconds)
    return {
        "mode": mode,
        "precision": precision,
        "videos_per_batch": k,
        "frames": frames,
        "seconds": seconds,
        "median_seconds": med,
        "frames_per_second": frames / med,
        "rows_equal": equal,
    }


def _ray_runs(args: argparse.Namespace, tasks: list[VideoTask], output: Any) -> list[dict]:
    """The same settings through a ``num_gpus=1`` Ray actor (a local Ray started here)."""
    import ray

    checkpoint = Path(args.checkpoint).read_bytes()
    gpus = torch.cuda.device_count() if args.ray_gpus is None else args.ray_gpus
    if gpus == 0:
        raise SystemExit("--ray needs a GPU (or --ray-gpus N): its actor asks for num_gpus=1")
    ray.init(address="local", num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    runs = []
    try:
        for precision in args.precisions:
            rows: dict[int, list[bytes]] = {}
            for k in args.batches:
                seconds, frames = [], 0
                for _ in range(args.repeats):
                    out = output()
                    settings = settings_for(k, precision, args, f"ray-k{k}")
                    secs, frames, device = time_ray(checkpoint, tasks, settings, out, args.threads)
                    seconds.append(secs)
                    rows[k] = rles(out)
                mode = f"ray actor (num_gpus=1 of {gpus}, on {device})"
                runs.append(_run(mode, precision, k, frames, seconds, rows))
    finally:
        ray.shutdown()
    return runs


def render(result: dict[str, Any]) -> str:
    head = (
        f"{result['videos']} videos x {result['frames_per_video']} frames at "
        f"{result['width']}x{result['height']}, {result['objects']} objects, "
        f"{result['device']} {result['device_name'] or ''}, {result['threads']} threads, "
        f"median of {result['repeats']}"
    )
    rows = [
        (
            r["mode"],
            r["precision"],
            r["videos_per_batch"],
            f"{r['median_seconds']:.2f}",
            f"{r['frames_per_second']:.2f}",
            "" if r["speedup_over_1"] is None else f"x{r['speedup_over_1']:.2f}",
            "" if r["rows_equal"] is None else f"{r['rows_equal']:.4f}",
        )
        for r in result["runs"]
    ]
    headers = ("mode", "precision", "videos/batch", "s/shard", "frames/s", "vs 1", "rows equal")
    load = (
        f"load average (1 min): {result['load_average_1min_start']:.2f} at start, "
        f"{result['load_average_1min']:.2f} at end, on {result['cpu_count']} CPUs"
    )
    return "\n".join([head, format_table(headers, rows), load])


if __name__ == "__main__":
    raise SystemExit(main())
