"""Export a labeling run's masks to the two formats other tools read: DAVIS PNGs and COCO JSON.

``davis``: one palette PNG per frame, ``<out>/<video_id>/<frame_name>.png``, pixel value =
object id (0 = background), coloured with the DAVIS palette (:func:`stm_core.io.write_mask`), so
DAVIS evaluation code and ``stm-label evaluate`` read them as they are. A video id holding
``/`` (a flat corpus's ``set1/cat``, a video file's ``clips/cat.mp4``) becomes nested folders,
mirroring the corpus: ``<out>/set1/cat/00000.png``. Ids are paths inside the corpus, so two ids
never map to one folder; ids with empty, ``.`` or ``..`` segments are refused (they would write
outside ``<out>`` or collide).

``coco``: one ``<out>/instances.json`` in the video flavour of COCO instances (as TAO and
YouTube-VIS use it):

- ``videos``: ``{id, name, height, width, length}``; ``name`` is the run's video id string,
  ``id`` an integer 1..N in video id order;
- ``images``: one per (video, frame) with ``{id, video_id, frame_index, frame_name, file_name,
  height, width}``; ``video_id`` refers to ``videos[].id`` (integers, as COCO references are);
  ``file_name`` is ``<video_id>/<frame_name>`` without an extension, because the masks table
  keeps frame stems only (and frames of video files have no file at all);
- ``annotations``: one per non-empty (frame, object) mask, ``segmentation`` = COCO compressed
  RLE ``{size: [h, w], counts: str}`` exactly as stored, ``area``, ``bbox`` ``[x, y, w, h]``,
  ``iscrowd`` 0, ``category_id`` = ``track_id`` = the object id (so track ids are unique within
  a video, not across videos), ``score`` and ``is_seed``. An object absent from a frame (an
  empty mask, area 0) has no annotation;
- ``categories``: one per object id present in the export, named ``object_<id>``.

The JSON is streamed to disk (annotations go to a side file while images are written, then are
appended), so a large run's export never holds all annotations in memory. Both formats write
each file under a temporary name and rename it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from schemas.tables import SCHEMA_VERSION
from stm_core.errors import InputError
from stm_core.io import write_mask

from .run_reader import LabelRun, VideoMasks

__all__ = ["FORMATS", "ExportSummary", "davis_folder", "export_coco", "export_davis", "export_run"]

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("davis", "coco")
COCO_FILE = "instances.json"


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: ``files`` PNGs (davis) or ``annotations`` (coco) for ``frames``
    frames of ``videos`` videos, under ``out``."""

    format: str
    out: Path
    videos: int
    frames: int
    files: int = 0
    annotations: int = 0

    def __str__(self) -> str:
        what = f"{self.files} PNGs" if self.format == "davis" else f"{self.annotations} masks"
        where = self.out / COCO_FILE if self.format == "coco" else self.out
        return f"exported {what} of {self.frames} frames in {self.videos} videos to {where}"


def export_run(
    run: LabelRun, fmt: str, out_dir: str | Path, video_ids: Iterable[str] | None = None
) -> ExportSummary:
    """Export ``video_ids`` (default: every video with masks) of ``run`` as ``fmt``.

    Raises InputError for an unknown format (before anything is read) and, through
    :meth:`LabelRun.iter_videos`, for unknown video ids (before anything is written).
    """
    if fmt not in FORMATS:
        raise InputError(None, f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    videos = run.iter_videos(None if video_ids is None else list(video_ids))
    videos = _peek(videos)  # unknown ids raise here, before a file is written
    if fmt == "davis":
        return export_davis(videos, out_dir)
    record = run.record or {}
    info = {
        "description": f"stm-label masks of run {run.run_id}",
        "run_id": run.run_id,
        "checkpoint_id": record.get("checkpoint_id"),
        "schema_version": SCHEMA_VERSION,
        "committed": run.committed,
    }
    return export_coco(videos, out_dir, info)


def _peek(videos: Iterator[VideoMasks]) -> Iterator[VideoMasks]:
    """Start ``videos`` (so validation inside the generator runs now) and give it back whole."""
    try:
        first = next(videos)
    except StopIteration:
        return iter(())

    def chained() -> Iterator[VideoMasks]:
        yield first
        yield from videos

    return chained()


def _safe_part(name: str, what: str, video_id: str) -> str:
    if not name or name in (".", "..") or "\\" in name or "\0" in name:
        raise InputError(
            None, f"{what} {name!r} of video {video_id!r} cannot name a file or folder"
        )
    return name


def davis_folder(out_dir: str | Path, video_id: str) -> Path:
    """The folder of ``video_id``'s PNGs: ``out_dir/<video_id>``, ``/`` in the id nesting
    folders. InputError for ids that would leave ``out_dir`` (``..``, empty segments)."""
    parts = [_safe_part(p, "path segment", video_id) for p in video_id.split("/")]
    return Path(out_dir).joinpath(*parts)


# --- DAVIS ----------------------------------------------------------------------------------


def export_davis(videos: Iterable[VideoMasks], out_dir: str | Path) -> ExportSummary:
    """One palette PNG per frame with rows: ``out_dir/<video_id>/<frame_name>.png``."""
    out = Path(out_dir)
    n_videos = n_frames = 0
    for video in videos:
        folder = davis_folder(out, video.video_id)
        for frame in video.iter_frames():
            name = _safe_part(frame.frame_name, "frame name", video.video_id)
            if "/" in name:
                raise InputError(None, f"frame name {name!r} of video {video.video_id!r} has '/'")
            write_mask(folder / f"{name}.png", frame.labels)
            n_frames += 1
        n_videos += 1
        logger.info("davis: %s -> %s (%d frames)", video.video_id, folder, video.num_frames)
    return ExportSummary("davis", out, n_videos, n_frames, files=n_frames)


# --- COCO -----------------------------------------------------------------------------------


class _JsonArray:
    """Writes the items of one JSON array to a text file, one per line, commas between."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self.count = 0

    def add(self, item: dict[str, Any]) -> None:
        self.file.write(("\n" if self.count == 0 else ",\n") + json.dumps(item))
        self.count += 1


def coco_annotation(
    row: dict[str, Any], annotation_id: int, image_id: int, video_number: int
) -> dict[str, Any]:
    """One MASKS row (as a dict) -> a COCO annotation; see the module docstring."""
    return {
        "id": annotation_id,
        "image_id": image_id,
        "video_id": video_number,
        "category_id": int(row["object_id"]),
        "track_id": int(row["object_id"]),
        "segmentation": {
            "size": [int(row["height"]), int(row["width"])],
            "counts": bytes(row["rle"]).decode("ascii"),
        },
        "area": int(row["area"]),
        "bbox": [float(v) for v in row["bbox"]],
        "iscrowd": 0,
        "score": round(float(row["score"]), 6),
        "is_seed": bool(row["is_seed"]),
    }


def export_coco(
    videos: Iterable[VideoMasks], out_dir: str | Path, info: dict[str, Any] | None = None
) -> ExportSummary:
    """Write ``out_dir/instances.json`` (see the module docstring), streamed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / COCO_FILE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{COCO_FILE}.", suffix=".tmp", dir=out)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "w", encoding="utf-8") as main,
            tempfile.TemporaryFile("w+", encoding="utf-8", dir=out) as side,
        ):
            main.write('{"info": ' + json.dumps(info or {}) + ',\n"images": [')
            images, annotations = _JsonArray(main), _JsonArray(side)
            video_entries, categories = _write_videos(videos, images, annotations)
            main.write('\n],\n"annotations": [')
            side.seek(0)
            shutil.copyfileobj(side, main)
            main.write('\n],\n"videos": ' + json.dumps(video_entries))
            cats = [
                {"id": k, "name": f"object_{k}", "supercategory": "object"}
                for k in sorted(categories)
            ]
            main.write(',\n"categories": ' + json.dumps(cats) + "}\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an export is meant to be shared
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    n_frames = images.count
    logger.info("coco: %d images, %d annotations -> %s", n_frames, annotations.count, target)
    return ExportSummary(
        "coco", out, len(video_entries), n_frames, files=1, annotations=annotations.count
    )


def _write_videos(
    videos: Iterable[VideoMasks], images: _JsonArray, annotations: _JsonArray
) -> tuple[list[dict[str, Any]], set[int]]:
    video_entries: list[dict[str, Any]] = []
    categories: set[int] = set()
    for video in videos:
        number = len(video_entries) + 1
        video_entries.append(
            {
                "id": number,
                "name": video.video_id,
                "height": video.height,
                "width": video.width,
                "length": video.num_frames,
            }
        )
        for rows in video.iter_frame_rows():
            image_id = images.count + 1
            images.add(
                {
                    "id": image_id,
                    "video_id": number,
                    "frame_index": int(rows[0]["frame_index"]),
                    "frame_name": str(rows[0]["frame_name"]),
                    "file_name": f"{video.video_id}/{rows[0]['frame_name']}",
                    "height": video.height,
                    "width": video.width,
                }
            )
            for row in rows:
                if row["area"] > 0:
                    annotations.add(coco_annotation(row, annotations.count + 1, image_id, number))
                    categories.add(int(row["object_id"]))
        logger.info("coco: %s (%d frames)", video.video_id, video.num_frames)
    return video_entries, categories
