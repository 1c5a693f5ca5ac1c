"""Export a labeling run's masks to the two formats other tools read: DAVIS PNGs and COCO JSON.

Names, so that an export lines up with annotations a user already has (``stm-label evaluate
--pred <export> --gt <annotations>`` needs no renaming):

- **Folders** are named by the *clean video id*: the video id without a video-file suffix
  (``car-shadow.mp4`` -> ``car-shadow``; see :data:`pipeline.corpus.VIDEO_SUFFIXES`). A ``/`` in
  the id (a flat corpus's ``set1/cat``, a video file's ``clips/cat.mp4``) is kept as nested
  folders, mirroring the corpus: ``<out>/set1/cat/``, ``<out>/clips/cat/``. Two videos whose
  clean ids are the same (``cat.mp4`` and ``cat.webm``, or ``cat.mp4`` and a frame folder
  ``cat``) would share a folder: the export refuses, naming both, before anything is written.
  Ids with empty, ``.`` or ``..`` segments are refused (they would write outside ``<out>``).
- **Frames** are named as the source names them: a frame folder's frames by their file stems
  (the masks table's ``frame_name``: ``00000.jpg`` -> ``00000.png``); a video file's frames by
  their index with ``frame_digits`` digits, 5 by default as DAVIS does (``00000.png``,
  ``00001.png``, ...; the masks table stores them as ``000000``, ``000001``, ...). A video counts
  as a video file when its id ends in a video suffix and its stored names are those indices.

``davis``: one palette PNG per frame, ``<out>/<clean video id>/<frame>.png``, pixel value =
object id (0 = background), coloured with the DAVIS palette (:func:`stm_core.io.write_mask`), so
DAVIS evaluation code and ``stm-label evaluate`` read them as they are.

``coco``: one ``<out>/instances.json`` in the video flavour of COCO instances (as TAO and
YouTube-VIS use it):

- ``videos``: ``{id, name, height, width, length}``; ``name`` is the run's video id string,
  ``id`` an integer 1..N in video id order;
- ``images``: one per (video, frame) with ``{id, video_id, frame_index, frame_name, file_name,
  height, width}``; ``video_id`` refers to ``videos[].id`` (integers, as COCO references are).
  ``file_name`` names where the image is: for a frame folder ``<video id>/<frame stem>`` (the
  frame's path in the corpus without its extension, which the masks table does not keep); for a
  video file ``<video id>#<frame index, 6 digits>`` (``car-shadow.mp4#000012``: frame 12 of that
  file, counted from 0 in presentation order), since a video's frame is no file. With
  ``with_frames`` the frames are read from the run's corpus and written as JPEGs beside the
  JSON, ``<out>/frames/<clean video id>/<frame>.jpg`` (named as in the DAVIS export), and
  ``file_name`` is that path relative to ``<out>``, so the export is self-contained;
- ``annotations``: one per non-empty (frame, object) mask, ``segmentation`` = COCO compressed
  RLE ``{size: [h, w], counts: str}`` exactly as stored, ``area``, ``bbox`` ``[x, y, w, h]``,
  ``iscrowd`` 0, ``category_id`` = ``track_id`` = the object id (so track ids are unique within
  a video, not across videos), ``score`` and ``is_seed``. An object absent from a frame (an
  empty mask, area 0) has no annotation;
- ``categories``: one per object id present in the export, named ``object_<id>``.

The JSON is streamed to disk (annotations go to a side file while images are written, then are
appended), so a large run's export never holds all annotations in memory. Every file is written
under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from schemas.tables import SCHEMA_VERSION
from stm_core.errors import InputError
from stm_core.io import write_mask

from .corpus import VIDEO_SUFFIXES
from .corpus.frames import FILE_FRAME_DIGITS
from .run_reader import LabelRun, RunCorpus, VideoMasks

__all__ = [
    "DAVIS_FRAME_DIGITS",
    "FORMATS",
    "FRAMES_DIR",
    "ExportSummary",
    "clean_video_id",
    "davis_folder",
    "export_coco",
    "export_davis",
    "export_folders",
    "export_run",
    "is_video_file",
]

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("davis", "coco")
COCO_FILE = "instances.json"
FRAMES_DIR = "frames"  # the COCO export's JPEGs (with_frames), beside instances.json
DAVIS_FRAME_DIGITS = 5  # a video file's frames are exported as 00000.png, 00001.png, ...
JPEG_QUALITY = 95


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: ``files`` PNGs (davis) or ``annotations`` (coco) for ``frames``
    frames of ``videos`` videos, under ``out``; ``frame_files`` JPEGs with ``with_frames``."""

    format: str
    out: Path
    videos: int
    frames: int
    files: int = 0
    annotations: int = 0
    frame_files: int = 0

    def __str__(self) -> str:
        what = f"{self.files} PNGs" if self.format == "davis" else f"{self.annotations} masks"
        where = self.out / COCO_FILE if self.format == "coco" else self.out
        text = f"exported {what} of {self.frames} frames in {self.videos} videos to {where}"
        if self.frame_files:
            text += f", and {self.frame_files} frames as JPEGs to {self.out / FRAMES_DIR}"
        return text


def export_run(
    run: LabelRun,
    fmt: str,
    out_dir: str | Path,
    video_ids: Iterable[str] | None = None,
    *,
    frame_digits: int = DAVIS_FRAME_DIGITS,
    with_frames: bool = False,
) -> ExportSummary:
    """Export ``video_ids`` (default: every video with masks) of ``run`` as ``fmt``.

    ``frame_digits``: how many digits a video file's frame names get (see the module
    docstring). ``with_frames`` (coco only): also write every frame as a JPEG, read from the
    run's corpus. Raises InputError before anything is written for an unknown format, unknown
    video ids (through :meth:`LabelRun.iter_videos`), two videos that would share a folder, and
    (with frames) a corpus that no longer lists a video.
    """
    if fmt not in FORMATS:
        raise InputError(None, f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    if with_frames and fmt != "coco":
        raise InputError(None, "with_frames (--with-frames) is for the coco format only")
    if frame_digits < 1:
        raise InputError(None, f"frame_digits must be >= 1, got {frame_digits}")
    wanted = None if video_ids is None else list(video_ids)
    videos = _peek(run.iter_videos(wanted))  # unknown ids raise here, before a file is written
    ids = run.video_ids() if wanted is None else wanted
    if fmt == "davis" or with_frames:
        export_folders(ids, out_dir)
    if fmt == "davis":
        return export_davis(videos, out_dir, frame_digits)
    record = run.record or {}
    info = {
        "description": f"stm-label masks of run {run.run_id}",
        "run_id": run.run_id,
        "checkpoint_id": record.get("checkpoint_id"),
        "schema_version": SCHEMA_VERSION,
        "committed": run.committed,
    }
    corpus = None
    if with_frames:
        corpus = RunCorpus.of_run(run)
        for video_id in ids:
            corpus.task(video_id)  # every video's frames are listed before a file is written
    return export_coco(videos, out_dir, info, corpus=corpus, frame_digits=frame_digits)


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


# --- names ----------------------------------------------------------------------------------


def clean_video_id(video_id: str) -> str:
    """The video id without a video-file suffix: ``clips/car-shadow.mp4`` -> ``clips/car-shadow``
    (any case of :data:`~pipeline.corpus.VIDEO_SUFFIXES`); other ids are returned as they are."""
    head, sep, name = video_id.rpartition("/")
    stem, suffix = posixpath.splitext(name)
    if stem and suffix.lower() in VIDEO_SUFFIXES:
        return head + sep + stem
    return video_id


def _safe_part(name: str, what: str, video_id: str) -> str:
    if not name or name in (".", "..") or "\\" in name or "\0" in name:
        raise InputError(
            None, f"{what} {name!r} of video {video_id!r} cannot name a file or folder"
        )
    return name


def davis_folder(out_dir: str | Path, video_id: str) -> Path:
    """The folder of ``video_id``'s files: ``out_dir/<clean video id>``, ``/`` in the id nesting
    folders. InputError for ids that would leave ``out_dir`` (``..``, empty segments)."""
    parts = [_safe_part(p, "path segment", video_id) for p in clean_video_id(video_id).split("/")]
    return Path(out_dir).joinpath(*parts)


def export_folders(video_ids: Iterable[str], out_dir: str | Path) -> dict[str, Path]:
    """Video id -> its export folder (:func:`davis_folder`). InputError naming both videos when
    two would share one folder (their ids differ only in a video-file suffix)."""
    folders: dict[str, Path] = {}
    owner: dict[Path, str] = {}
    for video_id in sorted(set(video_ids)):
        folder = davis_folder(out_dir, video_id)
        if folder in owner:
            raise InputError(
                None,
                f"videos {owner[folder]!r} and {video_id!r} would both be exported to {folder} "
                "(folders are named by the video id without its video-file suffix); export "
                "them into different --out folders, one with --video",
            )
        owner[folder] = video_id
        folders[video_id] = folder
    return folders


def is_video_file(video: VideoMasks) -> bool:
    """Whether ``video`` was labeled from a video file: its id ends in a video suffix and its
    stored frame names are its frame indices as :mod:`pipeline.corpus.frames` names a file's
    frames (``000000``, ``000001``, ...). A frame folder keeps its frames' own names."""
    if clean_video_id(video.video_id) == video.video_id:
        return False
    return all(
        name == f"{index:0{FILE_FRAME_DIGITS}d}"
        for index, name in zip(video.frame_indices, video.frame_names, strict=True)
    )


def _frame_namer(video: VideoMasks, digits: int) -> Callable[[int, str], str]:
    """(frame index, stored frame name) -> the exported file stem (module docstring)."""
    if is_video_file(video):
        return lambda index, _name: f"{index:0{digits}d}"

    def stem(_index: int, name: str) -> str:
        name = _safe_part(name, "frame name", video.video_id)
        if "/" in name:
            raise InputError(None, f"frame name {name!r} of video {video.video_id!r} has '/'")
        return name

    return stem


# --- DAVIS ----------------------------------------------------------------------------------


def export_davis(
    videos: Iterable[VideoMasks], out_dir: str | Path, frame_digits: int = DAVIS_FRAME_DIGITS
) -> ExportSummary:
    """One palette PNG per frame with rows: ``out_dir/<clean video id>/<frame>.png`` (names in
    the module docstring). Call :func:`export_folders` on the ids first to refuse collisions."""
    out = Path(out_dir)
    n_videos = n_frames = 0
    for video in videos:
        folder = davis_folder(out, video.video_id)
        name_of = _frame_namer(video, frame_digits)
        for frame in video.iter_frames():
            write_mask(folder / f"{name_of(frame.frame_index, frame.frame_name)}.png", frame.labels)
            n_frames += 1
        n_videos += 1
        logger.info("davis: %s -> %s (%d frames)", video.video_id, folder, video.num_frames)
    return ExportSummary("davis", out, n_videos, n_frames, files=n_frames)


# --- frames from the corpus -----------------------------------------------------------------


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=JPEG_QUALITY)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _FramePump:
    """Hands out the corpus frame of each frame index in ascending order, from one stream."""

    def __init__(self, video: VideoMasks, frames: Iterator[np.ndarray]) -> None:
        self.video = video
        self.frames = frames
        self.position = -1

    def at(self, index: int) -> np.ndarray:
        frame = None
        while self.position < index:
            frame = next(self.frames, None)
            if frame is None:
                raise InputError(
                    f"video {self.video.video_id!r}",
                    f"the corpus gave {self.position + 1} frames, but the masks go to frame "
                    f"{index}: the corpus changed since the run",
                )
            self.position += 1
        if frame is None:
            raise ValueError(f"frame {index} asked for twice or out of order")
        return frame

    def close(self) -> None:
        close = getattr(self.frames, "close", None)
        if close is not None:
            close()  # stops a folder's read-ahead threads or a file's decoder now


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


def coco_file_name(video: VideoMasks, frame_index: int, frame_name: str) -> str:
    """Where a frame's image is, without ``with_frames``: ``<video id>/<frame stem>`` for a frame
    folder, ``<video id>#<frame index, 6 digits>`` for a video file (module docstring)."""
    if is_video_file(video):
        return f"{video.video_id}#{frame_index:0{FILE_FRAME_DIGITS}d}"
    return f"{video.video_id}/{frame_name}"


def export_coco(
    videos: Iterable[VideoMasks],
    out_dir: str | Path,
    info: dict[str, Any] | None = None,
    *,
    corpus: RunCorpus | None = None,
    frame_digits: int = DAVIS_FRAME_DIGITS,
) -> ExportSummary:
    """Write ``out_dir/instances.json`` (see the module docstring), streamed; with ``corpus``,
    also every frame as ``out_dir/frames/<clean video id>/<frame>.jpg``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / COCO_FILE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{COCO_FILE}.", suffix=".tmp", dir=out)
    tmp = Path(tmp_name)
    writer = _CocoWriter(out, corpus, frame_digits)
    try:
        with (
            os.fdopen(fd, "w", encoding="utf-8") as main,
            tempfile.TemporaryFile("w+", encoding="utf-8", dir=out) as side,
        ):
            main.write('{"info": ' + json.dumps(info or {}) + ',\n"images": [')
            images, annotations = _JsonArray(main), _JsonArray(side)
            for video in videos:
                writer.add_video(video, images, annotations)
            main.write('\n],\n"annotations": [')
            side.seek(0)
            shutil.copyfileobj(side, main)
            main.write('\n],\n"videos": ' + json.dumps(writer.videos))
            cats = [
                {"id": k, "name": f"object_{k}", "supercategory": "object"}
                for k in sorted(writer.categories)
            ]
            main.write(',\n"categories": ' + json.dumps(cats) + "}\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an export is meant to be shared
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    n_frames = images.count
    logger.info("coco: %d images, %d annotations -> %s", n_frames, annotations.count, target)
    return ExportSummary(
        "coco",
        out,
        len(writer.videos),
        n_frames,
        files=1,
        annotations=annotations.count,
        frame_files=writer.frame_files,
    )


class _CocoWriter:
    """Adds one video at a time to the images and annotations arrays (and writes its frames)."""

    def __init__(self, out: Path, corpus: RunCorpus | None, frame_digits: int) -> None:
        self.out = out
        self.corpus = corpus
        self.frame_digits = frame_digits
        self.videos: list[dict[str, Any]] = []
        self.categories: set[int] = set()
        self.frame_files = 0

    def add_video(self, video: VideoMasks, images: _JsonArray, annotations: _JsonArray) -> None:
        number = len(self.videos) + 1
        self.videos.append(
            {
                "id": number,
                "name": video.video_id,
                "height": video.height,
                "width": video.width,
                "length": video.num_frames,
            }
        )
        pump = (
            None
            if self.corpus is None
            else _FramePump(video, self.corpus.frames(video.video_id, (video.height, video.width)))
        )
        folder = davis_folder(FRAMES_DIR, video.video_id).as_posix()
        name_of = _frame_namer(video, self.frame_digits)
        try:
            for rows in video.iter_frame_rows():
                index, name = int(rows[0]["frame_index"]), str(rows[0]["frame_name"])
                if pump is None:
                    file_name = coco_file_name(video, index, name)
                else:
                    file_name = f"{folder}/{name_of(index, name)}.jpg"
                    _write_jpeg(self.out / file_name, pump.at(index))
                    self.frame_files += 1
                image_id = images.count + 1
                images.add(
                    {
                        "id": image_id,
                        "video_id": number,
                        "frame_index": index,
                        "frame_name": name,
                        "file_name": file_name,
                        "height": video.height,
                        "width": video.width,
                    }
                )
                for row in rows:
                    if row["area"] > 0:
                        annotations.add(
                            coco_annotation(row, annotations.count + 1, image_id, number)
                        )
                        self.categories.add(int(row["object_id"]))
        finally:
            if pump is not None:
                pump.close()
        logger.info("coco: %s (%d frames)", video.video_id, video.num_frames)
