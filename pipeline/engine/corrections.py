"""Human corrections: one Parquet file per ``stm-label correct`` call, named by its content.

A correction is a (video, frame, object) mask that a person fixed. The next labeling of the
video uses it as a seed on its frame; the next fine-tune uses it as ground truth. When the same
(video, frame, object) was corrected more than once, the newest correction wins. File names are
a hash of the rows, so repeating the same command writes nothing new.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import table_io
from pipeline.corpus import RleSeed
from pipeline.rle import encode
from schemas.common import StorageOptions
from schemas.tables import CORRECTIONS, CorrectionRow
from stm_core.errors import InputError

log = logging.getLogger(__name__)


def correction_rows(
    video_id: str,
    frame_index: int,
    labels: np.ndarray,
    object_ids: Sequence[int],
    author: str,
    time: dt.datetime | None = None,
) -> list[CorrectionRow]:
    """One row per object of ``object_ids``: its mask in the label map ``labels`` (H x W ids;
    an object absent from it gets an empty mask, meaning "not on this frame")."""
    time = time or dt.datetime.now(dt.UTC)
    height, width = labels.shape
    return [
        CorrectionRow(
            video_id=video_id,
            frame_index=int(frame_index),
            object_id=int(o),
            height=int(height),
            width=int(width),
            rle=encode(labels == o),
            author=author,
            time=time,
        )
        for o in sorted(set(int(o) for o in object_ids))
    ]


def write_corrections(
    corrections_dir: str, rows: Iterable[CorrectionRow], options: StorageOptions | None
) -> str | None:
    """Store ``rows`` as one new file under ``corrections_dir``; returns its URI, or None when
    an identical set of corrections (same masks, same author) is there already."""
    rows = list(rows)
    if not rows:
        raise InputError(corrections_dir, "no corrections to write")
    digest = hashlib.sha256()
    for r in sorted(rows, key=lambda r: (r.video_id, r.frame_index, r.object_id)):
        digest.update(f"{r.video_id}\x1f{r.frame_index}\x1f{r.object_id}\x1f{r.author}".encode())
        digest.update(r.rle)
    uri = f"{corrections_dir.rstrip('/')}/{digest.hexdigest()[:20]}.parquet"
    table = CORRECTIONS.sort(CORRECTIONS.table(rows))
    try:
        table_io.write_table(table, uri, options, overwrite=False)
    except FileExistsError:
        log.info("%s: the same corrections are stored already", uri)
        return None
    return uri


def read_corrections(corrections_dir: str, options: StorageOptions | None) -> pa.Table:
    """The newest correction of every (video, frame, object), sorted; empty if there are none."""
    files = table_io.list_files(corrections_dir, options, suffix=".parquet")
    tables = [CORRECTIONS.check(table_io.read_table(f, options), f, cast=True) for f in files]
    if not tables:
        return CORRECTIONS.empty()
    table = pa.concat_tables(tables).sort_by(
        [
            ("video_id", "ascending"),
            ("frame_index", "ascending"),
            ("object_id", "ascending"),
            ("time", "descending"),
        ]
    )
    keys = pc.binary_join_element_wise(
        table["video_id"],
        pc.cast(table["frame_index"], pa.string()),
        pc.cast(table["object_id"], pa.string()),
        "\x1f",
    ).to_pylist()
    first = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    return CORRECTIONS.sort(table.take(first))


def corrections_by_video(table: pa.Table) -> dict[str, tuple[RleSeed, ...]]:
    """Corrections table -> video id -> the corrections as RLE seeds (for ``VideoTask``)."""
    out: dict[str, list[RleSeed]] = {}
    for row in table.to_pylist():
        out.setdefault(row["video_id"], []).append(
            RleSeed(row["frame_index"], row["object_id"], row["height"], row["width"], row["rle"])
        )
    return {v: tuple(s) for v, s in out.items()}


def latest_correction_time(table: pa.Table) -> dict[str, dt.datetime]:
    """Video id -> time of its newest correction."""
    out: dict[str, dt.datetime] = {}
    for video, time in zip(table["video_id"].to_pylist(), table["time"].to_pylist(), strict=True):
        if video not in out or time > out[video]:
            out[video] = time
    return out


def add_correction(
    run_uri: str,
    video_id: str,
    frame_index: int,
    mask_png: bytes,
    mask_source: str,
    author: str,
    object_id: int | None = None,
    options: StorageOptions | None = None,
) -> tuple[str | None, list[CorrectionRow]]:
    """Record a person's corrected mask of one frame of a labeled video (``stm-label correct``).

    ``run_uri`` is the labeling run whose mask is corrected (``<store>/runs/<run_id>``); the
    correction is stored in that store's ``corrections/``. ``mask_png``: without ``object_id``,
    the complete annotation of the frame (a label map, as a DAVIS annotation PNG): every object
    of the video gets a row, an object not drawn an empty mask. With ``object_id``, only that
    object: a two-valued PNG (0 and one other value) is its mask, a label map its pixels equal
    to ``object_id``. A mask of another size than the video, a frame the run did not label or an
    object id the video does not have is an InputError naming ``mask_source``. Returns the new
    file (None if the same correction is stored already) and the rows.
    """
    from pipeline.run_reader import open_run
    from stm_core.codec import decode_label_map

    from .layout import EngineLayout

    run = open_run(run_uri, options)
    video = run.video(video_id)
    frames, known = video.frame_indices, video.object_ids
    if frame_index not in set(frames):
        raise InputError(
            mask_source,
            f"frame {frame_index} of video {video_id!r} has no labels in run {run.run_id!r} "
            f"(frames {frames[0]}..{frames[-1]})",
        )
    labels = decode_label_map(mask_png, mask_source)
    if labels.shape != (video.height, video.width):
        raise InputError(
            mask_source,
            f"mask size {labels.shape[1]}x{labels.shape[0]} (width x height) differs from video "
            f"{video_id!r}'s {video.width}x{video.height}",
        )
    values = sorted(int(v) for v in np.unique(labels) if v)
    if object_id is not None:
        if object_id not in known:
            raise InputError(
                mask_source, f"object {object_id} is unknown in video {video_id!r} (known: {known})"
            )
        mask = labels > 0 if len(values) <= 1 else labels == object_id
        labels = np.where(mask, object_id, 0).astype(np.uint8)
        objects = [object_id]
    else:
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(
                mask_source,
                f"holds object id(s) {unknown} unknown in video {video_id!r} (known: {known})",
            )
        objects = known
    rows = correction_rows(video_id, frame_index, labels, objects, author)
    store = EngineLayout(run.layout.output_uri)
    return write_corrections(store.corrections_dir, rows, options), rows
