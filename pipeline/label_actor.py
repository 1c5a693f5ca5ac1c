"""The Ray labeling actor: a shell that loads the model once and calls ``label_shard``.

One actor per GPU (``num_gpus``) or, without GPUs, per ``cpu_threads_per_worker`` CPUs. Ray sets
``CUDA_VISIBLE_DEVICES`` for each actor, so ``cuda`` inside it is that actor's own GPU; where the
device is not real (logical GPUs on a CPU-only node) it falls back to the CPU.

Progress: each actor tells the run's :class:`ProgressTracker` (one small actor) what it did, as
counter deltas, batched (:class:`TrackerEvents`); the driver asks the tracker for a snapshot
about once a second and shows it (``pipeline.progress``).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray
import torch

from schemas.common import StorageOptions
from stm_core import load_model, pick_device

from .corpus import VideoTask
from .label_shard import LabelSettings, ShardEvents, ShardSummary, label_shard

PROGRESS_EVERY = 10  # frames between two progress messages to the tracker ...
PROGRESS_SECONDS = 2.0  # ... or seconds, whichever comes first (also for adaptation steps)


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
        events = None
        if self.tracker is not None:
            worker = ray.get_runtime_context().get_actor_id() or str(os.getpid())
            events = TrackerEvents(self.tracker, worker)
        summary = label_shard(
            self.model, shard, tasks, self.settings, self.output_uri, self.options, events
        )
        if events is not None:
            events.wait()  # the tracker has every count of this shard before the driver hears
        return summary

    def placement(self) -> dict[str, object]:
        """Where this actor runs: its GPU ids, CUDA_VISIBLE_DEVICES, torch device and pid."""
        return {
            "gpu_ids": [int(i) for i in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.device),
            "pid": os.getpid(),
        }


class TrackerEvents(ShardEvents):
    """Forwards ``label_shard``'s events to the run's :class:`ProgressTracker` as counter deltas
    (the keys of :meth:`ProgressTracker.snapshot`). Frames go in batches of ``PROGRESS_EVERY``
    or every ``PROGRESS_SECONDS``; adaptation steps at most every ``PROGRESS_SECONDS`` (and the
    first and last); the calls are fire-and-forget, so labeling never waits for the tracker.

    Frame totals: a frame folder's count is in the run's total from the start; a video file's
    is added when it is opened (``videos_unprobed`` goes down by one). A video that fails takes
    its unlabeled frames out of the total, so the total stays what the run will really label.
    Each video's counts are kept apart, so videos labeled together (``videos_per_batch``),
    whose events interleave, are counted as they are one at a time.
    """

    def __init__(
        self,
        tracker: ray.actor.ActorHandle,
        worker: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker, self.worker, self.clock = tracker, worker, clock
        self.shard = ""
        self.expected: dict[str, int | None] = {}  # video -> its frame count, once known
        self.done: dict[str, int] = {}  # video -> its frames labeled
        self.pending = 0  # frames labeled and not yet told
        self.last_sent = clock()
        self.last_step = -1e9
        self.adapting = False
        self.last_call: ray.ObjectRef | None = None

    def _add(self, **deltas: int) -> None:
        self.last_call = self.tracker.add.remote(self.shard, deltas)
        self.last_sent = self.clock()

    def shard_started(self, shard: str) -> None:
        self.shard = shard
        self.tracker.shard_started.remote(shard)

    def video_started(self, task: VideoTask) -> None:
        self.expected[task.video_id], self.done[task.video_id] = task.num_frames, 0
        self._add(videos_started=1)

    def video_probed(self, task: VideoTask, num_frames: int) -> None:
        if task.num_frames is None:
            self._add(frames_total=num_frames, videos_unprobed=-1)
        elif num_frames != task.num_frames:
            self._add(frames_total=num_frames - task.num_frames)
        self.expected[task.video_id] = num_frames

    def adapt_step(self, task: VideoTask, step: int, steps: int) -> None:
        now = self.clock()
        if step in (1, steps) or now - self.last_step >= PROGRESS_SECONDS:
            self.last_step = now
            self.adapting = step < steps
            self.tracker.adapting.remote(self.worker, task.video_id, step, steps)

    def frames_done(self, task: VideoTask, n: int) -> None:
        self.pending += n
        self.done[task.video_id] = self.done.get(task.video_id, 0) + n
        if self.pending >= PROGRESS_EVERY or self.clock() - self.last_sent >= PROGRESS_SECONDS:
            self._add(frames=self.pending)
            self.pending = 0

    def video_finished(self, task: VideoTask, failed: bool) -> None:
        expected = self.expected.pop(task.video_id, None)
        done = self.done.pop(task.video_id, 0)
        deltas = {"frames": self.pending, "videos": 1, "errors": int(failed)}
        if expected is None:  # a video file never opened, or one that states no count
            deltas |= {"videos_unprobed": -1, "frames_total": done}
        else:  # a failed video's unlabeled frames leave the total
            deltas["frames_total"] = done - expected
        self._add(**deltas)
        self.pending = 0
        if self.adapting:  # failed while adapting
            self.tracker.adapting.remote(self.worker, task.video_id, 0, 0)
            self.adapting = False

    def shard_finished(self, shard: str, tasks: Sequence[VideoTask], skipped: bool) -> None:
        # Written by an earlier attempt: its videos count as done, their frames leave the total
        # (ignored by the tracker when this shard's own attempt had reported before it died).
        done_elsewhere = {
            "videos": len(tasks),
            "frames_total": -sum(t.num_frames or 0 for t in tasks),
            "videos_unprobed": -sum(t.num_frames is None for t in tasks),
        }
        self.last_call = self.tracker.shard_finished.remote(
            shard, done_elsewhere if skipped else None
        )

    def wait(self) -> None:
        """Return once the tracker has taken every message sent so far (they run in order)."""
        if self.last_call is not None:
            ray.get(self.last_call)


class ProgressTracker:
    """The run's progress counters: the workers add what they did, the driver reads snapshots.

    Counts are kept per shard, so a shard redone on a restarted actor replaces what its dead
    attempt had reported instead of counting it twice. ``totals`` are the counts known before
    labeling starts (see :meth:`snapshot`).
    """

    def __init__(self, totals: Mapping[str, int]) -> None:
        self.base = {k: int(totals.get(k, 0)) for k in COUNTERS}
        self.by_shard: dict[str, dict[str, int]] = {}
        self.finished: set[str] = set()
        # worker -> (video ordinal in this run, video id, step, steps)
        self.adapting_now: dict[str, tuple[int, str, int, int]] = {}

    def shard_started(self, shard: str) -> None:
        self.by_shard[shard] = {}  # forget a dead attempt's partial counts

    def add(self, shard: str, deltas: Mapping[str, int]) -> None:
        counts = self.by_shard.setdefault(shard, {})
        for key, value in deltas.items():
            counts[key] = counts.get(key, 0) + value

    def adapting(self, worker: str, video_id: str, step: int, steps: int) -> None:
        if step >= steps:  # done (or given up): nothing to show for this worker
            self.adapting_now.pop(worker, None)
            return
        previous = self.adapting_now.get(worker)
        ordinal = (
            previous[0]
            if previous is not None and previous[1] == video_id
            else self._total("videos_started")
        )
        self.adapting_now[worker] = (ordinal, video_id, step, steps)

    def shard_finished(self, shard: str, done_elsewhere: Mapping[str, int] | None) -> None:
        if done_elsewhere is not None and not self.by_shard.get(shard):
            self.by_shard[shard] = dict(done_elsewhere)
        self.finished.add(shard)

    def _total(self, key: str) -> int:
        return self.base.get(key, 0) + sum(c.get(key, 0) for c in self.by_shard.values())

    def snapshot(self) -> dict[str, Any]:
        """``shards`` (finished, earlier attempts included) of ``shards_total``; ``videos``
        (finished, labeled or failed) of ``videos_total`` (those this attempt labels);
        ``frames`` of ``frames_total`` (the frames known so far; ``videos_unprobed`` video
        files are not counted yet); ``errors`` (errors rows so far, discovery's included);
        ``adapting``: [video ordinal, video id, step, steps] per worker fine-tuning now."""
        counts = {k: self._total(k) for k in COUNTERS}
        counts["shards"] += len(self.finished)
        counts["adapting"] = sorted(list(a) for a in self.adapting_now.values())
        return counts


COUNTERS = (
    "shards",
    "shards_total",
    "videos",
    "videos_started",
    "videos_total",
    "videos_unprobed",
    "frames",
    "frames_total",
    "errors",
)
