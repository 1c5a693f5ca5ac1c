"""Label one shard of videos: the pure function a Ray labeling actor calls.

For each video: probe its size, read its seeds, stream its frames through
``stm_core.propagate``, encode every (frame, object) mask as COCO RLE. A video's rows are kept
only if the whole video succeeded; any failure becomes one errors-table row (video, stage, error
type, message) and the shard goes on. The shard's two files are written once, whole, under
deterministic names (``pipeline.ledger.write_shard``), so redoing a shard after a crash rewrites
identical files and never duplicates a row.

While it works it tells a :class:`ShardEvents` what it does (videos begun and finished, frame
counts once known, adaptation steps, frames labeled), which the Ray actor forwards to the run's
progress tracker; the default ignores it all.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.common import StorageOptions
from schemas.tables import ERRORS, MASKS, ErrorRow, MaskRow
from stm_core import STM, propagate
from stm_core.adaptation import Adaptation, adapt_to_seeds
from stm_core.errors import STMLabelError
from stm_core.propagation import Precision

from . import ledger
from .corpus import (
    FrameScale,
    VideoTask,
    apply_corrections,
    complete_correction_frames,
    frame_name,
    frames_at,
    iter_frames,
    probe,
    read_seeds,
)
from .rle import encode_label_map
from .storage import open_fs

log = logging.getLogger(__name__)


class ShardEvents:
    """What :func:`label_shard` reports while it works, for a progress display. Every method
    does nothing here; a subclass overrides what it shows.

    Order: ``shard_started``; then per video ``video_started``, ``video_probed`` (its frame
    count, once the video is opened), ``adapt_step`` (each fine-tuning step, when adaptation is
    on), ``frames_done`` (each frame labeled) and ``video_finished``; ``shard_finished`` last.
    A shard that an earlier attempt had already written gets ``shard_finished`` only, with
    ``skipped=True``. A video that fails stops its sequence early and finishes with
    ``failed=True``.
    """

    def shard_started(self, shard: str) -> None:
        pass

    def video_started(self, task: VideoTask) -> None:
        pass

    def video_probed(self, task: VideoTask, num_frames: int) -> None:
        pass  # not called for a video file whose container states no frame count

    def adapt_step(self, task: VideoTask, step: int, steps: int) -> None:
        pass

    def frames_done(self, task: VideoTask, n: int) -> None:
        pass

    def video_finished(self, task: VideoTask, failed: bool) -> None:
        pass

    def shard_finished(self, shard: str, tasks: Sequence[VideoTask], skipped: bool) -> None:
        pass


@dataclass(frozen=True)
class LabelSettings:
    """Propagation settings shared by every video of a run."""

    run_id: str
    checkpoint_id: str
    started_at: dt.datetime  # the run's start (its plan's creation): the errors rows' time
    mem_every: int = 5
    max_memory_frames: int | None = 20
    max_frame_side: int | None = None
    adaptation: Adaptation = Adaptation(steps=0)
    precision: Precision = "fp32"


@dataclass(frozen=True)
class ShardSummary:
    shard: str
    videos: int
    frames: int
    masks: int
    errors: int
    seconds: float
    skipped: bool = False  # already finished by an earlier attempt


class _StageError(Exception):
    """Carries the pipeline stage in which a video failed."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(str(error))
        self.stage, self.error = stage, error


def label_shard(
    model: STM,
    shard: str,
    tasks: Sequence[VideoTask],
    settings: LabelSettings,
    output_uri: str,
    options: StorageOptions,
    events: ShardEvents | None = None,
) -> ShardSummary:
    """Label ``tasks`` and write shard ``shard`` of run ``settings.run_id``, telling ``events``
    how it goes."""
    start = time.monotonic()
    events = events or ShardEvents()
    if shard in ledger.finished_shards(output_uri, settings.run_id, options):
        log.info("run %s %s: already finished, skipped", settings.run_id, shard)
        events.shard_finished(shard, tasks, skipped=True)
        return ShardSummary(shard, 0, 0, 0, 0, 0.0, skipped=True)
    events.shard_started(shard)
    rows: list[MaskRow] = []
    errors: list[ErrorRow] = []
    frames = 0
    for task in tasks:
        events.video_started(task)
        try:
            video_rows, n = label_video(model, task, settings, options, events)
        except _StageError as failure:
            errors.append(
                error_row(
                    settings,
                    task.video_id,
                    failure.stage,
                    type(failure.error).__name__,
                    str(failure.error),
                )
            )
            log.warning("video %s failed at %s: %s", task.video_id, failure.stage, failure)
            events.video_finished(task, failed=True)
            continue
        events.video_finished(task, failed=False)
        rows.extend(video_rows)
        frames += n
    masks = MASKS.table(rows)
    errors_table = ERRORS.table(errors)
    ledger.write_shard(output_uri, settings.run_id, shard, masks, errors_table, options)
    events.shard_finished(shard, tasks, skipped=False)
    return ShardSummary(
        shard, len(tasks), frames, masks.num_rows, len(errors), time.monotonic() - start
    )


def label_video(
    model: STM,
    task: VideoTask,
    settings: LabelSettings,
    options: StorageOptions,
    events: ShardEvents | None = None,
) -> tuple[list[MaskRow], int]:
    """All mask rows of one video, and its frame count."""
    events = events or ShardEvents()
    fs, _ = open_fs(task.uri, options)
    info = _staged("read", lambda: probe(task, fs))
    if info.num_frames is not None:  # a video file that states no count: known at its end
        events.video_probed(task, info.num_frames)
    scale = FrameScale.for_size(info.size, settings.max_frame_side)
    seeds = _staged("seed", lambda: read_seeds(task, fs, info.size, info.num_frames))
    if task.corrections:
        seeds = _staged(
            "seed",
            lambda: apply_corrections(
                seeds, task.corrections, info.size, info.num_frames, "corrections", task.video_id
            ),
        )
    if not seeds:
        raise _StageError("seed", STMLabelError(f"video {task.video_id!r} has no seed masks"))
    native_seeds = seeds
    if scale.resized:
        seeds = {t: scale.to_working(m) for t, m in seeds.items()}
    all_ids = sorted({int(i) for m in seeds.values() for i in np.unique(m) if i})
    complete = complete_correction_frames(task.corrections, all_ids)
    if settings.adaptation.enabled:
        model = _adapted(
            model, task, fs, settings, info.size, seeds, lambda s, n: events.adapt_step(task, s, n)
        )
    frames = _tagged("decode", iter_frames(task, fs, settings.max_frame_side, info.size))
    rows: list[MaskRow] = []
    height, width = info.size
    n = 0
    try:
        outputs = propagate(
            model,
            frames,
            seeds,
            settings.mem_every,
            settings.max_memory_frames,
            complete,
            precision=settings.precision,
        )
        for out in outputs:
            is_seed = out.frame_index in seeds
            seed_ids = set(np.unique(seeds[out.frame_index]).tolist()) - {0} if is_seed else set()
            labels = out.labels
            if scale.resized:
                labels = scale.to_native(labels)
                for obj in seed_ids:  # seeds are stored exactly as given, at the native size
                    native = native_seeds[out.frame_index] == obj
                    labels[(labels == obj) & ~native] = 0
                    labels[native] = obj
            scores = _scores(out.probs, out.labels, out.object_ids)
            name = frame_name(task, out.frame_index)
            for enc in encode_label_map(labels, all_ids):
                seeded = enc.object_id in seed_ids
                rows.append(
                    MaskRow(
                        run_id=settings.run_id,
                        video_id=task.video_id,
                        frame_index=out.frame_index,
                        frame_name=name,
                        object_id=enc.object_id,
                        height=height,
                        width=width,
                        rle=enc.rle,
                        area=enc.area,
                        bbox=enc.bbox,
                        score=1.0 if seeded else scores.get(enc.object_id, 0.0),
                        is_seed=seeded,
                        checkpoint_id=settings.checkpoint_id,
                    )
                )
            n += 1
            events.frames_done(task, 1)
    except STMLabelError as exc:  # a _StageError from the frames passes through untouched
        raise _StageError("label", exc) from None
    return rows, n


def _adapted(
    model: STM,
    task: VideoTask,
    fs: Any,
    settings: LabelSettings,
    size: tuple[int, int],
    seeds: dict[int, np.ndarray],
    on_step: Callable[[int, int], None],
) -> STM:
    """A copy of ``model`` fine-tuned on this video's seed frames (``on_step(step, steps)``
    after each step). The frames are read in a first pass that stops at the last seed frame, so
    the propagation pass after it streams the video as usual."""
    seed_frames = _staged(
        "decode", lambda: frames_at(task, fs, seeds, settings.max_frame_side, size)
    )
    return _staged(
        "label", lambda: adapt_to_seeds(model, seed_frames, seeds, settings.adaptation, on_step)
    )


def _scores(probs: np.ndarray, labels: np.ndarray, object_ids: tuple[int, ...]) -> dict[int, float]:
    """Mean probability of each object over the pixels labeled as it (0 when it has none)."""
    scores = {}
    for channel, obj in enumerate(object_ids, start=1):
        where = labels == obj
        scores[obj] = float(probs[channel][where].mean()) if where.any() else 0.0
    return scores


def _staged(stage: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # every failure of one video is recorded, never fatal to the run
        raise _StageError(stage, exc) from None


def _tagged(stage: str, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Re-raise the frame iterator's failures tagged with ``stage``."""
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception as exc:
            raise _StageError(stage, exc) from None
        yield frame


def error_row(
    settings: LabelSettings, video_id: str | None, stage: str, error_type: str, message: str
) -> ErrorRow:
    """One errors-table row. Its time is the run's start, not the wall clock, so a shard redone
    after a crash writes exactly the rows an undisturbed run writes."""
    return ErrorRow(
        run_id=settings.run_id,
        video_id=video_id,
        stage=stage,
        error_type=error_type,
        message=message,
        time=settings.started_at,
    )
