"""Seconds per frame of ``stm_core.propagate`` at 480p for each trunk and object count.

What is timed: ``propagate(model, frames, {0: seed}, mem_every=5)`` over ``--frames`` frames; each
frame's time is the wall time of the generator's ``next()``, which covers encoding the previous
frame into memory (deferred by design), encoding the query, the memory read and the decoder for
every object, and converting the result to numpy. Frame 0 (the seed frame: nothing to segment) is
excluded; the median over the other frames is reported, with frames/s = 1 / median. Memory grows
over the run (permanent entries at 0, 5, 10, ... plus the previous frame), so this is the speed of
the first seconds of a video; ``bench_memory_growth`` covers long videos.

Per-stage breakdown (where the time goes, to choose the next optimisation from a measurement):
during the timed frames the network's entry points are wrapped with timers: query encode
(``encode_query``), memory encode (``encode_memory``, the previous frame's entry), memory read
(``ops.read_memory``, the attention over the bank), decoder (the rest of ``segment``: readout
reshape, fusion and the decoder), soft aggregation, and "other" (the frame's time minus those:
padding, tensors to numpy, the bank's bookkeeping). Outside ``propagate``, the two costs a corpus
job adds per frame are timed on the same frames: decoding the frame from JPEG bytes
(``stm_core.codec.decode_frame``) and encoding every object's mask as RLE rows
(``pipeline.rle.encode_label_map``). Medians per frame are reported for each stage.

The weights are random (``torch.manual_seed(0)``): the network's cost is a fixed sequence of
dense convolutions and matrix products whose size depends on the frame size, trunk and number of
objects, not on the weight values, so trained weights take the same time. Frames are real (the
``blackswan`` clip of the shared DAVIS data, resized if ``--size`` is not 854x480) when present,
else random; the seed is ``k`` side-by-side boxes (see ``common.box_seed``).

``--precisions fp32 bf16`` times each autocast mode (``stm_core.propagation``; fp16 needs CUDA).

Usage, from the repository root: ``python -m benchmarks.bench_propagation_speed [--frames 12]
[--trunks resnet50 resnet18] [--objects 1 2 4] [--precisions fp32 bf16] [--threads N]
[--out PATH]``. Writes JSON (default
``benchmarks/results/propagation_speed.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import stm_core.model.network as network_module
import stm_core.propagation as propagation_module
from benchmarks.common import (
    REAL_DATA_ROOT,
    box_seed,
    default_out,
    format_table,
    load_average,
    load_line,
    machine_info,
    median,
    parse_size,
    timed,
    write_json,
)
from pipeline.rle import encode_label_map
from stm_core import STM, propagate
from stm_core.codec import decode_frame
from stm_core.io import read_frame
from stm_core.model.inference import inference_copy
from stm_core.propagation import PRECISIONS

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


STAGES = ("query_encode", "memory_encode", "memory_read", "decoder", "soft_aggregate")


class StageTimer:
    """Wall time of each network stage within the current frame (seconds, summed over calls).

    Wraps the model's ``encode_query`` / ``encode_memory`` / ``segment`` on the instance and the
    module-level ``read_memory`` / ``soft_aggregate`` the network and the propagation loop call;
    :meth:`restore` undoes it. On CUDA each timer synchronises, so kernels are charged to the
    stage that launched them."""

    def __init__(self, model: STM) -> None:
        self.model = model
        self.sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
        self.frame: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._undo: list[tuple[object, str, object, bool]] = []
        self._wrap(model, "encode_query", "query_encode", instance=True)
        self._wrap(model, "encode_memory", "memory_encode", instance=True)
        self._wrap(model, "segment", "segment", instance=True)
        self._wrap(network_module, "read_memory", "memory_read")
        self._wrap(propagation_module, "soft_aggregate", "soft_aggregate")

    def _wrap(self, owner: object, name: str, stage: str, instance: bool = False) -> None:
        original = getattr(owner, name)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                self.frame[stage] = self.frame.get(stage, 0.0) + time.perf_counter() - start

        self._undo.append((owner, name, original, instance))
        setattr(owner, name, timed_call)

    def take(self) -> dict[str, float]:
        """This frame's stages (the decoder is ``segment`` minus its memory reads); resets."""
        frame, self.frame = self.frame, dict.fromkeys(STAGES, 0.0)
        frame["decoder"] = frame.pop("segment", 0.0) - frame["memory_read"]
        return frame

    def restore(self) -> None:
        for owner, name, original, instance in reversed(self._undo):
            if instance:
                delattr(owner, name)  # the class's method shows through again
            else:
                setattr(owner, name, original)
        self._undo.clear()


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def time_one(
    model: STM, frames: list[np.ndarray], n_objects: int, mem_every: int, precision: str = "fp32"
) -> dict[str, Any]:
    """Propagate a ``n_objects`` box seed through ``frames``; per-frame seconds without frame 0,
    and each frame's stages (see the module docstring)."""
    height, width = frames[0].shape[:2]
    seeds = {0: box_seed(height, width, n_objects)}
    encoded = [_jpeg(f) for f in frames]
    # What propagate runs (BatchNorms folded): timing it here, so the stage timers wrap the
    # copy that computes (propagate takes an inference copy as it is).
    model = inference_copy(model)
    seconds, stages, finite = [], [], True
    timer = StageTimer(model)
    start = time.perf_counter()
    try:
        outputs = propagate(model, frames, seeds, mem_every=mem_every, precision=precision)
        for result, dt in timed(outputs):
            frame_stages = timer.take()
            finite = finite and bool(np.isfinite(result.probs).all())
            if result.frame_index == 0:
                continue
            seconds.append(dt)
            frame_stages["other"] = dt - sum(frame_stages.values())
            tick = time.perf_counter()
            decode_frame(encoded[result.frame_index], "benchmark frame")
            frame_stages["jpeg_decode"] = time.perf_counter() - tick
            tick = time.perf_counter()
            encode_label_map(result.labels, result.object_ids)
            frame_stages["rle_encode"] = time.perf_counter() - tick
            stages.append(frame_stages)
    finally:
        timer.restore()
    total = time.perf_counter() - start
    med = median(seconds)
    return {
        "trunk": model.spec.name,
        "objects": n_objects,
        "precision": precision,
        "timed_frames": len(seconds),
        "seconds_per_frame": seconds,
        "median_seconds_per_frame": med,
        "frames_per_second": 1.0 / med,
        "min_seconds_per_frame": min(seconds),
        "max_seconds_per_frame": max(seconds),
        "total_seconds_with_seed_frame": total,
        "median_seconds_per_stage": {name: median([s[name] for s in stages]) for name in stages[0]},
        "probabilities_finite": finite,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12, help="frames per run, seed included")
    parser.add_argument("--trunks", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument(
        "--precisions", nargs="+", choices=PRECISIONS, default=["fp32"], help="autocast modes"
    )
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
        for k, precision in itertools.product(args.objects, args.precisions):
            runs.append(time_one(model, frames, k, args.mem_every, precision))
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
            r["precision"],
            f"{r['median_seconds_per_frame']:.3f}",
            f"{r['frames_per_second']:.2f}",
            f"{r['min_seconds_per_frame']:.3f} / {r['max_seconds_per_frame']:.3f}",
        )
        for r in runs
    ]
    headers = ("trunk", "objects", "precision", "median s/frame", "frames/s", "min / max s/frame")
    print(
        f"{width}x{height}, {args.frames - 1} timed frames, mem_every={args.mem_every}, "
        f"{args.threads} threads, frames: {source}"
    )
    print(format_table(headers, rows))
    stage_names = list(runs[0]["median_seconds_per_stage"])
    stage_rows = [
        (
            r["trunk"],
            r["objects"],
            r["precision"],
            *(f"{r['median_seconds_per_stage'][s]:.3f}" for s in stage_names),
        )
        for r in runs
    ]
    print("\nmedian seconds per frame in each stage (jpeg_decode and rle_encode are the job's)")
    print(format_table(("trunk", "objects", "precision", *stage_names), stage_rows))
    print(load_line(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
