"""Label one shard of videos: the pure function a Ray labeling actor calls.

For each video: probe its size, read its seeds, stream its frames through
``stm_core.propagate``, encode every (frame, object) mask as COCO RLE. A video's rows are kept
only if the whole video succeeded; any failure becomes one errors-table row (video, stage, error
type, message) and the shard goes on. The shard's two files are written once, whole, under
deterministic names (``pipeline.ledger.write_shard``), so redoing a shard after a crash rewrites
identical files and never duplicates a row.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.common import StorageOptions
from schemas.tables import ERRORS_SCHEMA, MASKS_SCHEMA
from stm_core import STM, propagate
from stm_core.adaptation import Adaptation, adapt_to_seeds
from stm_core.errors import STMLabelError

from . import ledger
from .discovery import VideoTask
from .rle import encode_label_map
from .seed_readers import apply_corrections, complete_correction_frames, read_seeds
from .storage import open_fs
from .video_readers import FrameScale, frame_name, iter_frames, probe

log = logging.getLogger(__name__)

FramesDone = Callable[[int], None]  # called with a number of frames just labeled


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
    on_frames: FramesDone | None = None,
) -> ShardSummary:
    """Label ``tasks`` and write shard ``shard`` of run ``settings.run_id``."""
    start = time.monotonic()
    if shard in ledger.finished_shards(output_uri, settings.run_id, options):
        log.info("run %s %s: already finished, skipped", settings.run_id, shard)
        return ShardSummary(shard, 0, 0, 0, 0, 0.0, skipped=True)
    columns: dict[str, list[Any]] = {name: [] for name in MASKS_SCHEMA.names}
    errors: list[dict[str, Any]] = []
    frames = 0
    for task in tasks:
        try:
            video_columns, n = label_video(model, task, settings, options, on_frames)
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
            continue
        for name, values in video_columns.items():
            columns[name].extend(values)
        frames += n
    masks = pa.table(columns, schema=MASKS_SCHEMA)
    errors_table = pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA)
    ledger.write_shard(output_uri, settings.run_id, shard, masks, errors_table, options)
    return ShardSummary(
        shard, len(tasks), frames, masks.num_rows, len(errors), time.monotonic() - start
    )


def label_video(
    model: STM,
    task: VideoTask,
    settings: LabelSettings,
    options: StorageOptions,
    on_frames: FramesDone | None = None,
) -> tuple[dict[str, list[Any]], int]:
    """All mask rows of one video as column lists, and its frame count."""
    fs, _ = open_fs(task.uri, options)
    info = _staged("read", lambda: probe(task, fs))
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
        model = _adapted(model, task, fs, settings, info.size, seeds)
    frames = _tagged("decode", iter_frames(task, fs, settings.max_frame_side, info.size))
    columns: dict[str, list[Any]] = {name: [] for name in MASKS_SCHEMA.names}
    height, width = info.size
    n = 0
    try:
        for out in propagate(
            model, frames, seeds, settings.mem_every, settings.max_memory_frames, complete
        ):
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
                columns["run_id"].append(settings.run_id)
                columns["video_id"].append(task.video_id)
                columns["frame_index"].append(out.frame_index)
                columns["frame_name"].append(name)
                columns["object_id"].append(enc.object_id)
                columns["height"].append(height)
                columns["width"].append(width)
                columns["rle"].append(enc.rle)
                columns["area"].append(enc.area)
                columns["bbox"].append(list(enc.bbox))
                seeded = enc.object_id in seed_ids
                columns["score"].append(1.0 if seeded else scores.get(enc.object_id, 0.0))
                columns["is_seed"].append(seeded)
                columns["checkpoint_id"].append(settings.checkpoint_id)
            n += 1
            if on_frames is not None:
                on_frames(1)
    except STMLabelError as exc:  # a _StageError from the frames passes through untouched
        raise _StageError("label", exc) from None
    return columns, n


def _adapted(
    model: STM,
    task: VideoTask,
    fs: Any,
    settings: LabelSettings,
    size: tuple[int, int],
    seeds: dict[int, np.ndarray],
) -> STM:
    """A copy of ``model`` fine-tuned on this video's seed frames. The frames are read in a
    first pass that stops at the last seed frame, so the propagation pass after it streams the
    video as usual."""
    wanted, last = set(seeds), max(seeds)
    seed_frames: dict[int, np.ndarray] = {}
    decoded = iter_frames(task, fs, settings.max_frame_side, size)
    try:
        for t, frame in enumerate(_tagged("decode", decoded)):
            if t in wanted:
                seed_frames[t] = frame
            if t >= last:
                break
    finally:
        close = getattr(decoded, "close", None)
        if close is not None:
            close()  # stops a folder's read-ahead threads or a file's decoder now
    return _staged("label", lambda: adapt_to_seeds(model, seed_frames, seeds, settings.adaptation))


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
) -> dict[str, Any]:
    """One errors-table row. Its time is the run's start, not the wall clock, so a shard redone
    after a crash writes exactly the rows an undisturbed run writes."""
    return {
        "run_id": settings.run_id,
        "video_id": video_id,
        "stage": stage,
        "error_type": error_type,
        "message": message,
        "time": settings.started_at,
    }
