"""The Ray labeling actor: a shell that loads the model once and calls ``label_shard``.

One actor per GPU (``num_gpus``) or, without GPUs, per ``cpu_threads_per_worker`` CPUs. Ray sets
``CUDA_VISIBLE_DEVICES`` for each actor, so ``cuda`` inside it is that actor's own GPU; where the
device is not real (logical GPUs on a CPU-only node) it falls back to the CPU.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import ray
import torch

from schemas.common import StorageOptions
from stm_core import load_model, pick_device

from .corpus import VideoTask
from .label_shard import LabelSettings, ShardSummary, label_shard

PROGRESS_EVERY = 10  # frames between two progress messages to the tracker


class LabelWorker:
    def __init__(
        self,
        checkpoint: bytes,
        settings: LabelSettings,
        output_uri: str,
        options: StorageOptions,
        threads: int,
        tracker: ray.actor.ActorHandle | None = None,
    ) -> None:
        torch.set_num_threads(threads)
        self.device = pick_device()
        self.model = load_model(io.BytesIO(checkpoint), device=self.device)
        self.settings, self.output_uri, self.options = settings, output_uri, options
        self.tracker = tracker

    def label(self, shard: str, tasks: Sequence[VideoTask]) -> ShardSummary:
        pending = 0

        def on_frames(n: int) -> None:
            nonlocal pending
            pending += n
            if self.tracker is not None and pending >= PROGRESS_EVERY:
                self.tracker.add_frames.remote(pending)
                pending = 0

        summary = label_shard(
            self.model, shard, tasks, self.settings, self.output_uri, self.options, on_frames
        )
        if self.tracker is not None:
            if pending:
                self.tracker.add_frames.remote(pending)
            self.tracker.shard_done.remote(summary.videos, summary.errors, summary.skipped)
        return summary

    def placement(self) -> dict[str, object]:
        """Where this actor runs: its GPU ids, CUDA_VISIBLE_DEVICES, torch device and pid."""
        return {
            "gpu_ids": [int(i) for i in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.device),
            "pid": os.getpid(),
        }


class ProgressTracker:
    """Counts the workers' progress so the driver can print it while shards run."""

    def __init__(self) -> None:
        self.frames = 0
        self.videos = 0
        self.errors = 0
        self.shards = 0

    def add_frames(self, n: int) -> None:
        self.frames += n

    def shard_done(self, videos: int, errors: int, skipped: bool) -> None:
        self.shards += 1
        if not skipped:
            self.videos += videos
            self.errors += errors

    def snapshot(self) -> dict[str, int]:
        return {
            "frames": self.frames,
            "videos": self.videos,
            "errors": self.errors,
            "shards": self.shards,
        }
