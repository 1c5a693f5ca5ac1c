"""The corpus labeling job's speed: its overhead over bare propagation, 1 vs 2 workers, and the
time to discover and plan a 10,000-video corpus on S3.

Everything runs in one process and one run, so the numbers compare like with like on this shared
machine: a moto S3 server on loopback (in this process, unless ``--endpoint`` points at one), a
local Ray with 2 CPUs started here, a random-weight ``resnet18`` checkpoint (the cost of STM is a
fixed sequence of convolutions and matrix products: weights do not change it).

**Corpus.** ``--videos`` synthetic videos of ``--frames`` frames at ``--size`` (two coloured boxes
drifting over a noisy background): all but the last are DAVIS frame folders of JPEGs, the last is
an mp4 (libx264); every video is seeded on frame 0 (two objects) from a Parquet seed table. The
corpus and seeds are uploaded to ``s3://<bucket>/<prefix>/``; the job writes its output there too.

**What is timed.**

- *bare*: for each video, ``stm_core.propagate`` over frames decoded from the LOCAL files (the
  same JPEGs / mp4 as on S3), the seed label map given in memory, every result consumed and
  nothing written; the model is loaded before the clock starts. Torch threads = 1. Run
  ``--bare-passes`` times (before and after the jobs, so drift from other users' load shows);
  bare frames/s is the median over passes of frames / seconds.
- *job*: ``run_label_job`` with ``workers`` = 1 or 2 and ``cpu_threads_per_worker`` = 1 on the
  already started Ray. ``total_seconds`` is the whole call (checkpoint check, discovery, plan,
  actor start-up with model load, labeling, run record); ``labeling_seconds`` is from "every
  actor has loaded its model" to "the last shard's files are written", i.e. per-frame storage
  reads, decoding, propagation, RLE and the Parquet writes. It comes from the job's own progress
  callback (``frames / frames_per_second`` of its last report, which measures exactly that span).
  Ray start-up is timed separately (``ray_start_seconds``) and is in neither. ``--address``
  joins a running cluster instead of starting one (it must have 2 free CPUs); the start-up time
  is then the connection's, and the JSON's ``settings.ray_address`` says so.
- *overhead* = 1 - job frames/s / bare frames/s, with the job's ``labeling_seconds`` (target
  < 10 %) and, for reference, with its ``total_seconds``.
- *discovery*: ``--discovery-videos`` tiny identical mp4 files (2 frames of 32 x 32) plus a
  Parquet seed table with one seed per video are uploaded (timed, not part of the result), then
  ``discover()`` (one listing of the corpus + reading the seed table), ``ledger.make_plan`` (pure)
  and ``ledger.load_or_create_plan`` (writes the plan to S3, as the job does) are timed.

Usage, from the repository root: ``python -m benchmarks.bench_label_job [--quick] [--out PATH]``
(``--quick``: a tiny smoke run). Writes JSON (default ``benchmarks/results/label_job.json``) and
prints a table.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from benchmarks.common import (
    default_out,
    format_table,
    load_average,
    machine_info,
    median,
    parse_size,
    write_json,
)
from pipeline.toy_corpus import encode_mp4, seed_rows, synthetic_video
from schemas.common import StorageOptions
from schemas.tables import SEEDS

log = logging.getLogger("bench_label_job")

DEFAULT_OUT = default_out("label_job")
FAKE_KEY = "testing"  # moto accepts any credentials; these can never reach a real account
BUCKET = "stm-bench"
DAVIS_FRAMES = "JPEGImages/480p"
TRUNK = "resnet18"
OBJECTS = 2
RAY_CPUS = 2
OVERHEAD_TARGET = 0.10
TINY_SIZE = (32, 32)  # (height, width) of the discovery corpus's mp4s
UPLOAD_THREADS = 16
UPLOAD_CHUNK = 250  # objects per fs.pipe call in the discovery upload


@dataclass(frozen=True)
class Video:
    """One benchmark video: its id in the corpus, its local source and its frame-0 seed."""

    video_id: str
    local: Path  # a frame folder or an mp4 file
    frames: int
    seed: np.ndarray  # H x W uint8 label map of frame 0


# ---------------------------------------------------------------------------------------------
# inputs


def build_corpus(root: Path, n_videos: int, n_frames: int, size: tuple[int, int]) -> list[Video]:
    """``root/corpus`` (frame folders ``v00, v01, ...`` and ``clips/v<last>.mp4``) and
    ``root/seeds.parquet``."""
    videos, rows = [], []
    for i in range(n_videos):
        video = synthetic_video(i, n_frames, size, objects=OBJECTS)
        frames, label0 = video.frames, video.labels[0]
        if i == n_videos - 1:
            video_id = f"clips/v{i:02d}.mp4"
            local = encode_mp4(root / "corpus" / video_id, frames)
        else:
            video_id = f"v{i:02d}"
            local = root / "corpus" / DAVIS_FRAMES / video_id
            local.mkdir(parents=True)
            for t, frame in enumerate(frames):
                Image.fromarray(frame).save(local / f"{t:05d}.jpg", quality=92)
        videos.append(Video(video_id, local, n_frames, label0))
        rows.extend(seed_rows(video_id, 0, label0))
    pq.write_table(SEEDS.table(rows), root / "seeds.parquet")
    return videos


def upload(fs: Any, items: dict[str, bytes]) -> float:
    """PUT every ``key -> bytes`` (chunks of ``UPLOAD_CHUNK`` from a thread pool); seconds."""
    start = time.perf_counter()
    keys = sorted(items)
    chunks = [keys[i : i + UPLOAD_CHUNK] for i in range(0, len(keys), UPLOAD_CHUNK)]
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda chunk: fs.pipe({k: items[k] for k in chunk}), chunks))
    return time.perf_counter() - start


def local_tree(root: Path, prefix: str) -> dict[str, bytes]:
    """Every file under ``root`` as ``<prefix>/<relative path> -> bytes``."""
    return {
        f"{prefix}/{p.relative_to(root).as_posix()}": p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# bare loop


def local_frames(video: Video) -> Iterator[np.ndarray]:
    """The video's frames decoded from the local files, lazily (as the pipeline streams them)."""
    from stm_core.io import read_frame

    if video.local.is_dir():
        for path in sorted(video.local.glob("*.jpg")):
            yield read_frame(path)
        return
    with av.open(str(video.local)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def bare_pass(model: Any, videos: list[Video], mem_every: int, max_memory: int) -> dict[str, Any]:
    """One pass of bare ``propagate`` over every video; per-video frames and seconds."""
    from stm_core import propagate

    per_video = []
    for video in videos:
        start = time.perf_counter()
        n = 0
        for out in propagate(model, local_frames(video), {0: video.seed}, mem_every, max_memory):
            assert out.labels.ndim == 2  # the result is materialised, as the job's is
            n += 1
        seconds = time.perf_counter() - start
        per_video.append({"video_id": video.video_id, "frames": n, "seconds": seconds})
    frames = sum(v["frames"] for v in per_video)
    seconds = sum(v["seconds"] for v in per_video)
    return {
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds,
        "median_video_fps": median([v["frames"] / v["seconds"] for v in per_video]),
        "per_video": per_video,
        "load_average_1min": os.getloadavg()[0],
    }


# ---------------------------------------------------------------------------------------------
# job


def job_run(config: Any) -> dict[str, Any]:
    """``run_label_job(config)`` timed as a whole and over its labeling phase (see module doc)."""
    from pipeline.corpus_job import run_label_job

    reports: list[dict[str, Any]] = []
    start = time.perf_counter()
    summary = run_label_job(config, progress=lambda snap: reports.append(dict(snap)))
    total = time.perf_counter() - start
    if summary.errors:
        raise RuntimeError(f"run {config.run_id}: {summary.errors} error rows; see its errors/")
    last = reports[-1] if reports else {}
    # frames / frames_per_second of the last report = seconds since the actors were ready.
    labeling = last["frames"] / last["frames_per_second"] if last.get("frames_per_second") else None
    return {
        "workers": config.workers,
        "videos": summary.videos,
        "frames": summary.frames,
        "masks": summary.masks,
        "errors": summary.errors,
        "shards": summary.shards,
        "total_seconds": total,
        "run_summary_wall_seconds": summary.wall_seconds,
        "labeling_seconds": labeling,
        "labeling_fps": summary.frames / labeling if labeling else None,
        "total_fps": summary.frames / total,
        "load_average_1min": os.getloadavg()[0],
    }


# ---------------------------------------------------------------------------------------------
# discovery of a large corpus


def discovery_bench(
    fs: Any, bucket: str, prefix: str, storage: StorageOptions, n_videos: int, per_shard: int
) -> dict[str, Any]:
    """Upload ``n_videos`` tiny mp4s + a seed table, then time discovery and planning."""
    from pipeline import ledger
    from pipeline.corpus import discover
    from pipeline.storage import open_fs

    tiny = synthetic_video(0, 2, TINY_SIZE, objects=OBJECTS)
    with tempfile.TemporaryDirectory() as tmp:
        data = encode_mp4(Path(tmp) / "tiny.mp4", tiny.frames).read_bytes()
    ids = [f"clips/{i // 1000:02d}/v{i:05d}.mp4" for i in range(n_videos)]
    rows = [row for video_id in ids for row in seed_rows(video_id, 0, tiny.labels[0])]
    seeds = SEEDS.table(rows)
    with tempfile.NamedTemporaryFile(suffix=".parquet") as file:
        pq.write_table(seeds, file.name)
        seed_bytes = Path(file.name).read_bytes()
    items = {f"{bucket}/{prefix}/corpus/{v}": data for v in ids}
    items[f"{bucket}/{prefix}/seeds.parquet"] = seed_bytes
    upload_seconds = upload(fs, items)

    corpus_uri = f"s3://{bucket}/{prefix}/corpus"
    open_fs(corpus_uri, storage)[0].invalidate_cache()  # no listing from an earlier call
    start = time.perf_counter()
    found = discover(corpus_uri, storage, f"s3://{bucket}/{prefix}/seeds.parquet")
    discover_seconds = time.perf_counter() - start
    video_ids = [t.video_id for t in found.tasks]
    start = time.perf_counter()
    plan = ledger.make_plan("bench-plan", video_ids, per_shard)
    make_plan_seconds = time.perf_counter() - start
    start = time.perf_counter()
    saved = ledger.load_or_create_plan(
        f"s3://{bucket}/{prefix}/out", "bench-plan", video_ids, per_shard, storage
    )
    save_plan_seconds = time.perf_counter() - start
    return {
        "videos": n_videos,
        "objects_uploaded": len(items),
        "mp4_bytes": len(data),
        "upload_seconds": upload_seconds,
        "discover_seconds": discover_seconds,
        "tasks": len(found.tasks),
        "discovery_errors": len(found.errors),
        "make_plan_seconds": make_plan_seconds,
        "load_or_create_plan_seconds": save_plan_seconds,
        "videos_per_shard": per_shard,
        "shards": len(plan.shards),
        "saved_shards": len(saved.shards),
        "discover_and_plan_seconds": discover_seconds + save_plan_seconds,
    }


# ---------------------------------------------------------------------------------------------
# main


def start_moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def fake_aws_env() -> None:
    """Fake credentials (inherited by Ray's workers) and no setting that could point a client
    at a real account or endpoint."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": FAKE_KEY,
            "AWS_SECRET_ACCESS_KEY": FAKE_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (< 1 min)")
    parser.add_argument("--videos", type=int, default=4, help="corpus videos (last one is mp4)")
    parser.add_argument("--frames", type=int, default=40, help="frames per video")
    parser.add_argument("--size", default="432x240", help="WIDTHxHEIGHT (even)")
    parser.add_argument("--mem-every", type=int, default=5)
    parser.add_argument("--max-memory-frames", type=int, default=20)
    parser.add_argument("--videos-per-shard", type=int, default=1)
    parser.add_argument("--bare-passes", type=int, default=2)
    parser.add_argument("--discovery-videos", type=int, default=10_000)
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of starting moto")
    parser.add_argument("--bucket", default=BUCKET, help="created if missing")
    parser.add_argument(
        "--address", help="join this running Ray cluster (2 free CPUs) instead of starting one"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.frames, args.size = 2, 5, "112x64"
        args.bare_passes, args.discovery_videos = 1, 60
    if args.videos < 2:
        parser.error("--videos must be >= 2 (frame folders and one mp4)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    size = parse_size(args.size)
    fake_aws_env()
    torch.set_num_threads(1)

    import ray
    import s3fs

    from schemas.label_job import LabelJobConfig
    from stm_core import STM, load_model, save_checkpoint

    server, endpoint = (None, args.endpoint) if args.endpoint else start_moto()
    tmp = tempfile.TemporaryDirectory(prefix="bench-label-job-")
    try:
        fs = s3fs.S3FileSystem(
            key=FAKE_KEY,
            secret=FAKE_KEY,
            client_kwargs={"endpoint_url": endpoint},
            skip_instance_cache=True,
            use_listings_cache=False,
        )
        if not fs.exists(args.bucket):
            fs.mkdir(args.bucket)
        storage = StorageOptions(endpoint_url=endpoint, key=FAKE_KEY, secret=FAKE_KEY)
        prefix = f"bench-{uuid.uuid4().hex[:10]}"
        root = Path(tmp.name)

        torch.manual_seed(0)
        checkpoint = root / f"random-{TRUNK}.pt"
        save_checkpoint(STM(TRUNK), checkpoint, metadata={"note": "random weights, benchmark"})
        videos = build_corpus(root, args.videos, args.frames, size)
        upload(fs, local_tree(root / "corpus", f"{args.bucket}/{prefix}/corpus"))
        upload(fs, {f"{args.bucket}/{prefix}/seeds.parquet": (root / "seeds.parquet").read_bytes()})

        model = load_model(checkpoint, device="cpu")
        bare_passes = [bare_pass(model, videos, args.mem_every, args.max_memory_frames)]

        start = time.perf_counter()
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False)
        ray_start = time.perf_counter() - start
        ray_cpus = int(ray.cluster_resources().get("CPU", 0))
        jobs = []
        try:
            for workers in (1, 2):
                config = LabelJobConfig(
                    corpus_uri=f"s3://{args.bucket}/{prefix}/corpus",
                    seeds_uri=f"s3://{args.bucket}/{prefix}/seeds.parquet",
                    output_uri=f"s3://{args.bucket}/{prefix}/out-w{workers}",
                    run_id=f"bench-w{workers}",
                    checkpoint_uri=str(checkpoint),
                    workers=workers,
                    cpu_threads_per_worker=1,
                    mem_every=args.mem_every,
                    max_memory_frames=args.max_memory_frames,
                    videos_per_shard=args.videos_per_shard,
                    storage=storage,
                )
                jobs.append(job_run(config))
        finally:
            ray.shutdown()
        for _ in range(args.bare_passes - 1):
            bare_passes.append(bare_pass(model, videos, args.mem_every, args.max_memory_frames))

        discovery = discovery_bench(
            fs, args.bucket, f"{prefix}/disc", storage, args.discovery_videos, 4
        )
    finally:
        tmp.cleanup()
        if server is not None:
            server.stop()

    result = summarise(args, size, bare_passes, jobs, ray_start, ray_cpus, discovery)
    write_json(args.out, result)
    print(render(result))
    print(f"wrote {args.out}")
    return 0


def summarise(
    args: argparse.Namespace,
    size: tuple[int, int],
    bare_passes: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
    ray_start: float,
    ray_cpus: int,
    discovery: dict[str, Any],
) -> dict[str, Any]:
    bare_fps = median([p["fps"] for p in bare_passes])
    one, two = jobs
    frames = {p["frames"] for p in bare_passes} | {j["frames"] for j in jobs}
    if len(frames) != 1:
        raise RuntimeError(f"bare loop and jobs labeled different frame counts: {sorted(frames)}")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    overhead = 1 - one["labeling_fps"] / bare_fps if one["labeling_fps"] else None
    return {
        "benchmark": "pipeline.corpus_job.run_label_job",
        "quick": args.quick,
        "settings": {
            "videos": args.videos,
            "frame_folders": args.videos - 1,
            "mp4_files": 1,
            "frames_per_video": args.frames,
            "height": size[0],
            "width": size[1],
            "objects": OBJECTS,
            "trunk": TRUNK,
            "weights": "random (torch.manual_seed(0))",
            "mem_every": args.mem_every,
            "max_memory_frames": args.max_memory_frames,
            "torch_threads": 1,
            "videos_per_shard": args.videos_per_shard,
            "ray_cpus": ray_cpus,  # the cluster's, when --address joins one
            "ray_address": args.address or "local (started here)",
            "storage": "moto S3 on loopback" + (" (external)" if args.endpoint else ""),
        },
        "timed": {
            "bare": "propagate over local JPEG/mp4 decoding, model preloaded, nothing written",
            "job_labeling_seconds": "all actors ready (model loaded) -> last shard written",
            "job_total_seconds": "whole run_label_job call; Ray start-up excluded",
        },
        "ray_start_seconds": ray_start,
        "bare_passes": bare_passes,
        "bare_fps": bare_fps,
        "jobs": jobs,
        "overhead_fraction": overhead,
        "overhead_fraction_total": 1 - one["total_fps"] / bare_fps,
        "overhead_target": OVERHEAD_TARGET,
        "overhead_ok": overhead is not None and overhead < OVERHEAD_TARGET,
        "speedup_2_vs_1_workers_labeling": ratio(two["labeling_fps"], one["labeling_fps"]),
        "speedup_2_vs_1_workers_total": ratio(two["total_fps"], one["total_fps"]),
        "discovery": discovery,
        **machine_info(("numpy", "torch", "ray", "s3fs", "moto", "pyarrow", "av")),
        "load_average_end": load_average(),
    }


def render(result: dict[str, Any]) -> str:
    def f(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    s = result["settings"]
    rows: list[tuple[str, str]] = [
        (
            "corpus",
            f"{s['videos']} videos ({s['frame_folders']} JPEG folders + 1 mp4) x "
            f"{s['frames_per_video']} frames, {s['width']}x{s['height']}, {s['objects']} objects",
        ),
        ("model / threads", f"{s['trunk']} random weights, 1 torch thread per worker"),
    ]
    for i, p in enumerate(result["bare_passes"], start=1):
        rows.append(
            (f"bare pass {i} fps (median per video)", f"{f(p['fps'])} ({f(p['median_video_fps'])})")
        )
    rows.append(("bare fps (median of passes)", f(result["bare_fps"])))
    rows.append(("Ray start-up s (not in job times)", f(result["ray_start_seconds"], 1)))
    for j in result["jobs"]:
        w = j["workers"]
        rows.append(
            (
                f"job {w} worker(s): labeling s / fps",
                f"{f(j['labeling_seconds'], 1)} / {f(j['labeling_fps'])}",
            )
        )
        rows.append(
            (
                f"job {w} worker(s): total s / fps",
                f"{f(j['total_seconds'], 1)} / {f(j['total_fps'])}",
            )
        )
    overhead = result["overhead_fraction"]
    rows += [
        (
            "overhead, labeling phase (target < 10%)",
            "n/a" if overhead is None else f"{100 * overhead:.1f}%",
        ),
        ("overhead incl. job start-up", f"{100 * result['overhead_fraction_total']:.1f}%"),
        ("2 vs 1 workers, labeling", f"x{f(result['speedup_2_vs_1_workers_labeling'])}"),
        ("2 vs 1 workers, total", f"x{f(result['speedup_2_vs_1_workers_total'])}"),
    ]
    d = result["discovery"]
    rows += [
        (
            "discovery corpus",
            f"{d['videos']} mp4s + seed table ({d['upload_seconds']:.1f} s upload)",
        ),
        ("discover() s (tasks)", f"{d['discover_seconds']:.2f} ({d['tasks']})"),
        ("make_plan s (shards)", f"{d['make_plan_seconds']:.3f} ({d['shards']})"),
        ("load_or_create_plan s (to S3)", f"{d['load_or_create_plan_seconds']:.2f}"),
        ("load average 1 min (start)", f"{result['load_average_1min']:.2f}"),
    ]
    return format_table(("measure", "value"), rows)


if __name__ == "__main__":
    raise SystemExit(main())
