"""Label one shard of videos: the pure function a Ray labeling actor calls.

For each video: probe its size, read its seeds, stream its frames through
``stm_core.propagate`` (or, with ``videos_per_batch`` > 1, through
``stm_core.batch_propagation.propagate_videos`` together with other videos of the shard),
encode every (frame, object) mask as COCO RLE. A video's rows are kept
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.common import StorageOptions
from schemas.tables import ERRORS, MASKS, ErrorRow, MaskRow
from stm_core import STM, propagate
from stm_core.adaptation import Adaptation, adapt_to_seeds
from stm_core.batch_propagation import VideoFrame, VideoInput, propagate_videos
from stm_core.errors import STMLabelError
from stm_core.propagation import FrameResult, Precision

from . import ledger
from .corpus import (
    FrameScale,
    VideoInfo,
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
    ``failed=True``. With ``videos_per_batch`` > 1 several videos are under way at once: each
    keeps this order, their events interleave, and a video starts when one ends.
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
    videos_per_batch: int = 1  # videos propagated together (stm_core.batch_propagation)

    def __post_init__(self) -> None:
        if self.videos_per_batch < 1:
            raise ValueError(f"videos_per_batch must be >= 1, got {self.videos_per_batch}")
        if self.videos_per_batch > 1 and self.adaptation.enabled:
            raise ValueError(
                "videos_per_batch > 1 needs adaptation off: fine-tuning makes a model per "
                "video, and the videos of a batch share one model"
            )


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
    how it goes.

    With ``settings.videos_per_batch`` > 1 up to that many videos are propagated together
    (:func:`_label_together`); the shard's rows are the same, in the same order (videos in
    task order, each video's frames in order), and so are its error rows."""
    start = time.monotonic()
    events = events or ShardEvents()
    if shard in ledger.finished_shards(output_uri, settings.run_id, options):
        log.info("run %s %s: already finished, skipped", settings.run_id, shard)
        events.shard_finished(shard, tasks, skipped=True)
        return ShardSummary(shard, 0, 0, 0, 0, 0.0, skipped=True)
    events.shard_started(shard)
    if settings.videos_per_batch > 1:
        outcomes = _label_together(model, tasks, settings, options, events)
    else:
        outcomes = [_label_alone(model, task, settings, options, events) for task in tasks]
    rows: list[MaskRow] = []
    errors: list[ErrorRow] = []
    frames = 0
    for task, outcome in zip(tasks, outcomes, strict=True):
        if outcome.failure is not None:
            failure = outcome.failure
            errors.append(
                error_row(
                    settings,
                    task.video_id,
                    failure.stage,
                    type(failure.error).__name__,
                    str(failure.error),
                )
            )
            continue
        rows.extend(outcome.rows)
        frames += outcome.frames
    masks = MASKS.table(rows)
    errors_table = ERRORS.table(errors)
    ledger.write_shard(output_uri, settings.run_id, shard, masks, errors_table, options)
    events.shard_finished(shard, tasks, skipped=False)
    return ShardSummary(
        shard, len(tasks), frames, masks.num_rows, len(errors), time.monotonic() - start
    )


@dataclass
class _Outcome:
    """One video's share of the shard: its rows and frame count, or why it failed."""

    rows: list[MaskRow]
    frames: int
    failure: _StageError | None = None


def _label_alone(
    model: STM,
    task: VideoTask,
    settings: LabelSettings,
    options: StorageOptions,
    events: ShardEvents,
) -> _Outcome:
    events.video_started(task)
    try:
        rows, n = label_video(model, task, settings, options, events)
    except _StageError as failure:
        return _failed(task, failure, events)
    events.video_finished(task, failed=False)
    return _Outcome(rows, n)


def _failed(task: VideoTask, failure: _StageError, events: ShardEvents) -> _Outcome:
    log.warning("video %s failed at %s: %s", task.video_id, failure.stage, failure)
    events.video_finished(task, failed=True)
    return _Outcome([], 0, failure)


def _label_together(
    model: STM,
    tasks: Sequence[VideoTask],
    settings: LabelSettings,
    options: StorageOptions,
    events: ShardEvents,
) -> list[_Outcome]:
    """Every task's outcome, in task order, from propagating up to ``videos_per_batch``
    videos at once (``stm_core.batch_propagation``): each video is read, seeded and turned
    into rows exactly as :func:`label_video` does, and fails alone with the same stage and
    error. Videos start in task order as places in the batch free up, so their events
    interleave (each video's own sequence keeps :class:`ShardEvents`' order)."""
    outcomes: dict[int, _Outcome] = {}
    videos: dict[int, _Video] = {}

    def inputs() -> Iterator[VideoInput]:
        for i, task in enumerate(tasks):
            events.video_started(task)
            try:
                video = _prepare(task, settings, options, events)
            except _StageError as failure:
                outcomes[i] = _failed(task, failure, events)
                continue
            videos[i] = video
            yield VideoInput(i, video.frames(settings), video.seeds, video.complete)

    stream = propagate_videos(
        model,
        inputs(),
        settings.videos_per_batch,
        settings.mem_every,
        settings.max_memory_frames,
        settings.precision,
    )
    for event in stream:
        assert isinstance(event.key, int)
        video = videos[event.key]
        if isinstance(event, VideoFrame):
            try:
                video.rows.extend(video.frame_rows(event.result, settings))
            except STMLabelError as exc:  # as label_video: the video fails, at its next frame
                video.stop = exc
            else:
                events.frames_done(video.task, 1)
            continue
        del videos[event.key]
        if event.error is None:
            outcomes[event.key] = _Outcome(video.rows, event.frames)
            events.video_finished(video.task, failed=False)
        else:
            outcomes[event.key] = _failed(video.task, _stage_of(event.error), events)
    return [outcomes[i] for i in range(len(tasks))]


def _stage_of(error: Exception) -> _StageError:
    """A video's error as :func:`label_video` reports it: frames' failures carry their stage,
    the model's input errors are the label stage; anything else is not the video's fault."""
    if isinstance(error, _StageError):
        return error
    if isinstance(error, STMLabelError):
        return _StageError("label", error)
    raise error


@dataclass
class _Video:
    """One video read and seeded, ready to propagate (seeds at the working size)."""

    task: VideoTask
    fs: Any
    info: VideoInfo
    scale: FrameScale
    seeds: dict[int, np.ndarray]
    native_seeds: dict[int, np.ndarray]
    all_ids: list[int]
    complete: set[int]
    rows: list[MaskRow] = field(default_factory=list)  # the batched path's rows so far
    stop: Exception | None = None  # the batched path's failure, raised at the next frame

    def frames(self, settings: LabelSettings) -> Iterator[np.ndarray]:
        """The frames at the working size; failures tagged with their stage."""
        frames = iter_frames(self.task, self.fs, settings.max_frame_side, self.info.size)
        for frame in _tagged("decode", frames):
            yield frame
            if self.stop is not None:
                raise self.stop

    def frame_rows(self, out: FrameResult, settings: LabelSettings) -> list[MaskRow]:
        """One row per object of the video for frame ``out.frame_index``, at the native size;
        seeds are stored exactly as given."""
        is_seed = out.frame_index in self.seeds
        seed_ids = set(np.unique(self.seeds[out.frame_index]).tolist()) - {0} if is_seed else set()
        labels = out.labels
        if self.scale.resized:
            labels = out.labels_at(self.info.size)
            for obj in seed_ids:  # seeds are stored exactly as given, at the native size
                native = self.native_seeds[out.frame_index] == obj
                labels[(labels == obj) & ~native] = 0
                labels[native] = obj
        scores = _scores(out.probs, out.labels, out.object_ids)
        name = frame_name(self.task, out.frame_index)
        height, width = self.info.size
        rows = []
        for enc in encode_label_map(labels, self.all_ids):
            seeded = enc.object_id in seed_ids
            rows.append(
                MaskRow(
                    run_id=settings.run_id,
                    video_id=self.task.video_id,
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
        return rows


def _prepare(
    task: VideoTask, settings: LabelSettings, options: StorageOptions, events: ShardEvents
) -> _Video:
    """Open ``task``, read its size and seeds (corrections applied, at the working size)."""
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
    return _Video(task, fs, info, scale, seeds, native_seeds, all_ids, complete)


def label_video(
    model: STM,
    task: VideoTask,
    settings: LabelSettings,
    options: StorageOptions,
    events: ShardEvents | None = None,
) -> tuple[list[MaskRow], int]:
    """All mask rows of one video, and its frame count."""
    events = events or ShardEvents()
    video = _prepare(task, settings, options, events)
    if settings.adaptation.enabled:
        model = _adapted(
            model,
            task,
            video.fs,
            settings,
            video.info.size,
            video.seeds,
            lambda s, n: events.adapt_step(task, s, n),
        )
    rows: list[MaskRow] = []
    n = 0
    try:
        outputs = propagate(
            model,
            video.frames(settings),
            video.seeds,
            settings.mem_every,
            settings.max_memory_frames,
            video.complete,
            precision=settings.precision,
        )
        for out in outputs:
            rows.extend(video.frame_rows(out, settings))
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
