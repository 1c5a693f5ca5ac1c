"""Seed sources parsed and decoded: each format has one parser, used by discovery (which frames
are seeded) and by the worker (the masks).

Three sources (``SeedRef.kind``):

- ``"masks"``: one PNG per annotated frame, ``<masks folder>/<frame stem>.png`` (DAVIS /
  YouTube-VOS ``Annotations/``), decoded by :func:`stm_core.codec.decode_label_map`
  (palette indices are ids; greyscale ``{0, 255}`` is object 1).
- ``"coco"``: a COCO-style JSON with RLE masks; its structure is documented at
  :func:`parse_coco_seeds`.
- ``"parquet"``: a table with ``schemas.tables.SEEDS_SCHEMA`` columns (video_id, frame_index,
  object_id, height, width, rle = COCO compressed RLE counts), one file or a folder of files.

Both table-like sources are parsed once per process and kept in a small cache keyed by
(filesystem, URI, version): a worker labelling hundreds of videos reads a 100 MB seed file once,
not once per video, and a file rewritten between runs (new ETag / mtime) is read again.

Every result is ``frame index -> H x W uint8 label map`` (0 = background, k = object k), the
form :func:`stm_core.propagation.propagate` takes, at the video's *native* size; see
:class:`pipeline.corpus.frames.FrameScale` to bring seeds to a downscaled working size.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas.tables import SEEDS_SCHEMA
from stm_core.codec import decode_label_map, resize_labels, size_text
from stm_core.errors import InputError

from ..rle import decode as rle_decode
from ..storage import fs_path
from .tasks import RleSeed, VideoTask

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "apply_corrections",
    "complete_correction_frames",
    "load_seed_source",
    "parse_coco_seeds",
    "read_seed_source",
    "read_seeds",
    "seed_table_frames",
    "seed_table_index",
]

logger = logging.getLogger(__name__)

Size = tuple[int, int]  # (height, width) in pixels
MAX_OBJECT_ID = 255  # label maps are uint8
SEED_COLUMNS: tuple[str, ...] = tuple(SEEDS_SCHEMA.names)


def _require_int(value: Any, what: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(source, f"{what} must be an integer, got {value!r}")
    return int(value)


def _compress_counts(segmentation: Any, source: str) -> tuple[int, int, bytes]:
    """A COCO ``segmentation`` -> (height, width, compressed counts).

    Compressed RLE (``counts`` a string) is kept as it is; uncompressed RLE (``counts`` a list
    of run lengths, column-major as COCO defines it) is compressed with pycocotools. Polygons
    are rejected: a seed must say exactly which pixels are the object.
    """
    if not isinstance(segmentation, Mapping):
        kind = "polygons" if isinstance(segmentation, list) else type(segmentation).__name__
        raise InputError(source, f"segmentation must be an RLE dict {{size, counts}}, got {kind}")
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2):
        raise InputError(source, f"segmentation size must be [height, width], got {size!r}")
    height = _require_int(size[0], "segmentation height", source)
    width = _require_int(size[1], "segmentation width", source)
    if isinstance(counts, str):
        return height, width, counts.encode("ascii")
    if isinstance(counts, bytes):
        return height, width, counts
    if isinstance(counts, list) and all(isinstance(c, int) for c in counts):
        if sum(counts) != height * width:
            raise InputError(
                source, f"uncompressed RLE runs sum to {sum(counts)}, not {height}*{width}"
            )
        from pycocotools import mask as mask_utils

        compressed = mask_utils.frPyObjects(
            {"size": [height, width], "counts": counts}, height, width
        )
        return height, width, compressed["counts"]
    raise InputError(source, "segmentation counts must be an RLE string or a list of run lengths")


def _paint(
    seeds: Iterable[RleSeed], size: Size, source: str, video_id: str
) -> dict[int, np.ndarray]:
    """Decode RLE seeds into one label map per frame.

    Objects are painted in ascending id order, so where two seed masks of one frame overlap the
    higher id wins (and a warning says how many pixels); a label map holds one id per pixel.
    """
    by_frame: dict[int, dict[int, RleSeed]] = {}
    for seed in seeds:
        where = f"{source} [video {video_id!r}, frame {seed.frame_index}, object {seed.object_id}]"
        if not 1 <= seed.object_id <= MAX_OBJECT_ID:
            raise InputError(where, f"object id must be in 1..{MAX_OBJECT_ID} (0 is background)")
        got = (seed.height, seed.width)
        if got != size:
            raise InputError(
                where,
                f"seed mask size {size_text(got)} (width x height) differs from the video's "
                f"{size_text(size)}",
            )
        frame = by_frame.setdefault(seed.frame_index, {})
        if seed.object_id in frame:
            raise InputError(where, "two seed masks for the same frame and object")
        frame[seed.object_id] = seed

    out: dict[int, np.ndarray] = {}
    for index in sorted(by_frame):
        labels = np.zeros(size, np.uint8)
        for object_id in sorted(by_frame[index]):
            seed = by_frame[index][object_id]
            where = f"{source} [video {video_id!r}, frame {index}, object {object_id}]"
            try:
                mask = np.asarray(rle_decode(seed.counts, seed.height, seed.width)) > 0
            except (ValueError, TypeError) as exc:
                raise InputError(where, f"RLE does not decode ({exc})") from None
            overlap = int(np.count_nonzero(mask & (labels > 0)))
            if overlap:
                logger.warning(
                    "%s: overlaps lower ids on %d pixels; id %d kept", where, overlap, object_id
                )
            labels[mask] = object_id
        out[index] = labels
    return out


def parse_coco_seeds(document: Any, source: str) -> dict[str, list[RleSeed]]:
    """Video id -> its seeds, from a COCO-style JSON document (already ``json.loads``-ed).

    Expected structure (extra keys are ignored)::

        {
          "videos": [{"id": 7, "name": "blackswan"}, ...],          # optional
          "images": [{"id": 70, "video_id": 7, "frame_index": 0}, ...],
          "annotations": [
            {"image_id": 70, "track_id": 1,
             "segmentation": {"size": [480, 854], "counts": "<compressed RLE>"}}, ...
          ]
        }

    - ``videos[].name`` is the corpus video id (the path inside the corpus: ``"blackswan"``,
      ``"clips/cat.mp4"``) and ``images[].video_id`` refers to ``videos[].id``. Without a
      ``videos`` list, ``images[].video_id`` must itself be the corpus video id (a string).
    - ``frame_index`` is the frame's position in the video (0-based, folder name order or
      decode order), not a number in a file name.
    - The object id is ``track_id`` when present, else ``object_id``, else ``category_id``
      (fine for one object per category, as in DAVIS-style seeds). Ids are 1..255 and unique per
      frame; two masks of one frame with the same id are an error rather than merged.
    - ``segmentation`` is RLE: compressed (``counts`` a string, as pycocotools writes it) or
      uncompressed (``counts`` a list of column-major run lengths). Polygons are rejected.

    Any structural problem raises InputError naming ``source``: a seed file is all or nothing.
    """
    if not isinstance(document, Mapping):
        raise InputError(source, "COCO seeds must be a JSON object with images and annotations")
    images, annotations = document.get("images"), document.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise InputError(source, "COCO seeds need 'images' and 'annotations' lists")

    names: dict[Any, str] | None = None
    if document.get("videos") is not None:
        videos = document["videos"]
        if not isinstance(videos, list):
            raise InputError(source, "'videos' must be a list")
        names = {}
        for i, video in enumerate(videos):
            if not isinstance(video, Mapping) or "id" not in video or "name" not in video:
                raise InputError(source, f"videos[{i}] needs 'id' and 'name'")
            names[video["id"]] = str(video["name"])

    frames: dict[Any, tuple[str, int]] = {}  # image id -> (video id, frame index)
    for i, image in enumerate(images):
        if not isinstance(image, Mapping) or not {"id", "video_id", "frame_index"} <= image.keys():
            raise InputError(source, f"images[{i}] needs 'id', 'video_id' and 'frame_index'")
        ref = image["video_id"]
        if names is not None:
            if ref not in names:
                raise InputError(source, f"images[{i}] refers to video id {ref!r} not in 'videos'")
            video_id = names[ref]
        elif isinstance(ref, str):
            video_id = ref
        else:
            raise InputError(
                source, f"images[{i}].video_id is {ref!r}: without 'videos' it must be the name"
            )
        index = _require_int(image["frame_index"], f"images[{i}].frame_index", source)
        if index < 0:
            raise InputError(source, f"images[{i}].frame_index is negative ({index})")
        frames[image["id"]] = (video_id, index)

    out: dict[str, list[RleSeed]] = {}
    for i, ann in enumerate(annotations):
        where = f"{source} [annotations[{i}]]"
        if not isinstance(ann, Mapping) or "image_id" not in ann or "segmentation" not in ann:
            raise InputError(where, "needs 'image_id' and 'segmentation'")
        if ann["image_id"] not in frames:
            raise InputError(where, f"image_id {ann['image_id']!r} is not in 'images'")
        key = next((k for k in ("track_id", "object_id", "category_id") if k in ann), None)
        if key is None:
            raise InputError(where, "needs an object id: 'track_id', 'object_id' or 'category_id'")
        object_id = _require_int(ann[key], key, where)
        video_id, index = frames[ann["image_id"]]
        height, width, counts = _compress_counts(ann["segmentation"], where)
        out.setdefault(video_id, []).append(RleSeed(index, object_id, height, width, counts))
    return out


def seed_table_index(table: Any, source: str) -> dict[str, list[RleSeed]]:
    """Video id -> its seeds, from a pyarrow Table with the SEEDS_SCHEMA columns."""
    missing = [c for c in SEED_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(
            source, f"seed table lacks columns {missing} (expected {list(SEED_COLUMNS)})"
        )
    columns = {c: table.column(c).to_pylist() for c in SEED_COLUMNS}
    out: dict[str, list[RleSeed]] = {}
    for row in range(table.num_rows):
        values = {c: columns[c][row] for c in SEED_COLUMNS}
        if any(v is None for v in values.values()):
            nulls = [c for c, v in values.items() if v is None]
            raise InputError(source, f"row {row} has nulls in {nulls}")
        rle = values["rle"]
        seed = RleSeed(
            int(values["frame_index"]),
            int(values["object_id"]),
            int(values["height"]),
            int(values["width"]),
            rle.encode("ascii") if isinstance(rle, str) else bytes(rle),
        )
        out.setdefault(str(values["video_id"]), []).append(seed)
    return out


def _parquet_dataset(fs: AbstractFileSystem, uri: str) -> Any:
    """A Parquet file, or every ``*.parquet`` under a folder (names starting with ``.`` or
    ``_`` skipped, as pyarrow does), with its columns checked against SEEDS_SCHEMA."""
    import pyarrow.dataset as pads

    dataset = pads.dataset(fs_path(uri), filesystem=fs, format="parquet")
    missing = [c for c in SEED_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise InputError(uri, f"seed table lacks columns {missing} (expected {list(SEED_COLUMNS)})")
    return dataset


def read_parquet_table(fs: AbstractFileSystem, uri: str) -> Any:
    """The whole seed table as one pyarrow Table."""
    return _parquet_dataset(fs, uri).to_table(columns=list(SEED_COLUMNS))


def seed_table_frames(fs: AbstractFileSystem, uri: str) -> dict[str, set[int]]:
    """Video id -> seeded frame indices, reading only those two columns (what discovery
    needs; the RLE column stays on storage until a worker reads it)."""
    table = _parquet_dataset(fs, uri).to_table(columns=["video_id", "frame_index"])
    frames: dict[str, set[int]] = {}
    for video_id, index in zip(
        table.column("video_id").to_pylist(), table.column("frame_index").to_pylist(), strict=True
    ):
        if video_id is None or index is None:
            raise InputError(uri, "seed table has null video_id or frame_index")
        frames.setdefault(str(video_id), set()).add(int(index))
    return frames


def read_seed_source(fs: AbstractFileSystem, kind: str, uri: str) -> dict[str, list[RleSeed]]:
    """Video id -> its seeds, from a whole COCO JSON or Parquet seed source: the one parser of
    each format (discovery takes the seeded frames from it, workers the masks)."""
    fs.invalidate_cache(fs_path(uri))  # a cached listing would give a stale size to pyarrow
    try:
        if kind == "coco":
            raw = fs.cat_file(fs_path(uri))
            try:
                document = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(uri, f"is not valid JSON ({exc})") from None
            return parse_coco_seeds(document, uri)
        if kind == "parquet":
            return seed_table_index(read_parquet_table(fs, uri), uri)
    except OSError as exc:
        raise InputError(
            uri, f"cannot read the seed source ({type(exc).__name__}: {exc})"
        ) from None
    raise ValueError(f"not a table-like seed source kind: {kind!r}")


@functools.lru_cache(maxsize=4)
def load_seed_source(
    fs: AbstractFileSystem, kind: str, uri: str, version: str
) -> dict[str, list[RleSeed]]:
    """:func:`read_seed_source` once per process and (filesystem, URI, version): a worker
    labelling hundreds of videos reads a 100 MB seed file once. ``version`` (size and ETag or
    mtime, recorded by discovery) is in the key only so a rewritten file is read again."""
    logger.info("reading seed source %s (%s)", uri, kind)
    return read_seed_source(fs, kind, uri)


def read_seeds(
    task: VideoTask,
    fs: AbstractFileSystem,
    size: Size,
    num_frames: int | None = None,
    resize_mismatched: bool = False,
) -> dict[int, np.ndarray]:
    """Frame index -> ``H x W`` uint8 label map for every seeded frame of ``task``.

    ``size`` is the video's native ``(height, width)``. ``num_frames`` bounds the frame indices
    (default: ``task.num_frames``, known for frame folders; for video files pass the count from
    :func:`pipeline.corpus.frames.probe` when the container states it, else indices are not
    checked here and a seed past the last frame is the caller's to notice).

    A seed of another size raises InputError naming the seed source and both sizes; for PNG
    masks ``resize_mismatched`` resizes them (nearest) with a warning instead (real data has
    an 853-wide mask on 854-wide frames: cutie-judo). RLE
    seeds are never resized: their size is written next to them, so a mismatch means the wrong
    video. A frame index outside the video raises InputError.
    """
    ref = task.seeds
    if ref is None:
        raise InputError(task.uri, f"video {task.video_id!r} has no seed source")
    count = num_frames if num_frames is not None else task.num_frames

    if ref.kind == "masks":
        seeds = {}
        for index, name in ref.mask_files:
            mask_uri = f"{ref.uri}/{name}"
            try:
                data = fs.cat_file(fs_path(mask_uri))
            except OSError as exc:
                raise InputError(mask_uri, f"cannot read ({type(exc).__name__}: {exc})") from None
            labels = decode_label_map(data, mask_uri)
            got: Size = (labels.shape[0], labels.shape[1])
            if got != size:
                if not resize_mismatched:
                    raise InputError(
                        mask_uri,
                        f"seed mask size {size_text(got)} (width x height) differs from the size "
                        f"of video {task.video_id!r}, {size_text(size)}",
                    )
                logger.warning(
                    "%s: resizing seed mask from %s to %s",
                    mask_uri,
                    size_text(got),
                    size_text(size),
                )
                labels = resize_labels(labels, size)
            seeds[index] = labels
    elif ref.kind in ("coco", "parquet"):
        index_map = load_seed_source(fs, ref.kind, ref.uri, ref.version)
        rows = index_map.get(task.video_id)
        if not rows:
            raise InputError(ref.uri, f"has no seeds for video {task.video_id!r}")
        seeds = _paint(rows, size, ref.uri, task.video_id)
    else:
        raise ValueError(f"unknown seed source kind {ref.kind!r}")

    bad = sorted(i for i in seeds if i < 0 or (count is not None and i >= count))
    if bad:
        has = "an unknown number of" if count is None else f"{count} (indices 0..{count - 1})"
        raise InputError(
            ref.uri,
            f"seeds for frame indices {bad} of video {task.video_id!r}, which has {has} frames",
        )
    return seeds


def apply_corrections(
    seeds: Mapping[int, np.ndarray],
    corrections: Iterable[RleSeed],
    size: Size,
    num_frames: int | None,
    source: str,
    video_id: str,
) -> dict[int, np.ndarray]:
    """``seeds`` with human corrections painted over them: on a corrected frame each corrected
    object gets exactly its corrected mask (taken from whoever had those pixels), so
    propagation restarts from it there (the ``stm_core`` correction path). An empty
    correction removes the object from that frame's seed; whether the object is then absent
    from the frame depends on the frame's correction being complete (see
    :func:`complete_correction_frames`). Every corrected frame gets a seed, possibly empty."""
    out = {t: np.array(m, copy=True) for t, m in seeds.items()}
    for c in sorted(corrections, key=lambda c: (c.frame_index, c.object_id)):
        where = f"{source} [video {video_id!r}, frame {c.frame_index}, object {c.object_id}]"
        if (c.height, c.width) != tuple(size):
            raise InputError(
                where,
                f"correction size {c.width}x{c.height} (width x height) differs from the "
                f"video's {size_text(size)}",
            )
        if c.frame_index < 0 or (num_frames is not None and c.frame_index >= num_frames):
            raise InputError(where, f"frame index outside the video's {num_frames} frames")
        try:
            mask = np.asarray(rle_decode(c.counts, c.height, c.width)) > 0
        except (ValueError, TypeError) as exc:
            raise InputError(where, f"RLE does not decode ({exc})") from None
        labels = out.setdefault(c.frame_index, np.zeros(size, np.uint8))
        labels[labels == c.object_id] = 0
        labels[mask] = c.object_id
    return out


def complete_correction_frames(
    corrections: Iterable[RleSeed], object_ids: Iterable[int]
) -> set[int]:
    """Frames whose corrections cover every one of the video's ``object_ids``: such a frame's
    corrected label map is its complete annotation (an object not drawn is absent), which
    ``stm_core.propagate`` takes as ``complete_seeds``."""
    wanted = set(object_ids)
    by_frame: dict[int, set[int]] = {}
    for c in corrections:
        by_frame.setdefault(c.frame_index, set()).add(c.object_id)
    return {t for t, objects in by_frame.items() if wanted and wanted <= objects}
