"""Which frames of which video are seeded, and where the seeds are: a :class:`SeedRef` per task.

Seed sources (``seeds_format``): ``"masks"`` (PNG per annotated frame; by default the layout's
``Annotations`` folder, or ``seeds_uri``: a folder of ``<video id>/<frame stem>.png``, where a
video file's frames are named ``000000, 000001, ...``), ``"coco"`` (a JSON file, see
:func:`pipeline.corpus.seeds.parse_coco_seeds`) or ``"parquet"`` (a file or folder with the
``SEEDS_SCHEMA`` columns). ``"auto"`` picks by the ``seeds_uri`` suffix (``.json``, ``.parquet``
/ ``.pq``), else by what the folder holds. Seeds must live on the corpus's filesystem: the worker
reads them through the same ``fs``. Tasks carry a reference to their seeds, never decoded masks.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass, field
from typing import Any

from schemas.common import StorageOptions
from stm_core.codec import MASK_SUFFIX, natural_key
from stm_core.errors import InputError

from ..storage import split_uri
from .layout import FoundVideos
from .listing import (
    Tree,
    hidden,
    list_tree,
    listing_version,
    open_corpus_fs,
    parent_folder,
    relative,
    subtree,
    suffix_of,
)
from .seeds import read_seed_source, seed_table_frames
from .tasks import (
    NO_SEEDS,
    SEED_FRAME_UNKNOWN,
    SEED_WITHOUT_VIDEO,
    STAGE_SEEDS,
    DiscoveryError,
    SeedKind,
    SeedRef,
    SeedsFormat,
    VideoTask,
)

__all__ = ["SeedIndex", "attach_seeds", "index_seeds", "mask_folder_ref"]

PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")


@dataclass
class SeedIndex:
    """Seeds found per video id before matching: PNG masks (stem -> file name) or frames."""

    kind: SeedKind
    uri: str  # the seed file, or the masks root folder
    version: str = ""
    masks: dict[str, dict[str, str]] = field(default_factory=dict)  # video -> stem -> file
    frames: dict[str, set[int]] = field(default_factory=dict)  # video -> frame indices


def _mask_index(fs: Any, masks_root: str, tree: Tree) -> SeedIndex:
    """Group ``<video id>/<stem>.png`` files under a masks root (a tree relative to it)."""
    index = SeedIndex("masks", fs.unstrip_protocol(masks_root))
    for rel in sorted(tree.files, key=natural_key):
        if suffix_of(rel) == MASK_SUFFIX and "/" in rel:
            name = posixpath.basename(rel)
            index.masks.setdefault(parent_folder(rel), {})[posixpath.splitext(name)[0]] = name
    return index


def _seed_kind(seeds_uri: str, seeds_format: SeedsFormat, fs: Any, path: str) -> SeedKind:
    if seeds_format != "auto":
        return seeds_format
    suffix = suffix_of(path)
    if suffix == ".json":
        return "coco"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if fs.isdir(path):
        has_parquet = any(suffix_of(p) in PARQUET_SUFFIXES for p in fs.find(path))
        return "parquet" if has_parquet else "masks"
    raise InputError(
        seeds_uri, "cannot tell the seed format: expected a .json, a .parquet or a folder"
    )


def index_seeds(
    fs: Any,
    root: str,
    tree: Tree,
    found: FoundVideos,
    seeds_uri: str | None,
    seeds_format: SeedsFormat,
    options: StorageOptions,
) -> SeedIndex | None:
    """Read what discovery needs of the seed source (video ids and frames, not masks)."""
    if seeds_uri is None:
        if seeds_format not in ("auto", "masks"):
            raise InputError(None, f"seeds_format={seeds_format!r} needs a seeds_uri")
        if found.masks_dir is None:
            return None
        return _mask_index(
            fs, posixpath.join(root, found.masks_dir), subtree(tree, found.masks_dir)
        )

    protocol, _ = split_uri(seeds_uri)
    if protocol != split_uri(fs.unstrip_protocol(root))[0]:
        raise InputError(seeds_uri, "seeds must be on the corpus's filesystem (same scheme)")
    _, path = open_corpus_fs(seeds_uri, options)
    fs.invalidate_cache(path)  # a seed file rewritten since the last look must not look unchanged
    kind = _seed_kind(seeds_uri, seeds_format, fs, path)
    if kind == "masks":
        rel = relative(path, root)
        if rel is not None:
            return _mask_index(fs, path, subtree(tree, rel) if rel else tree)
        seeds_tree, _ = list_tree(fs, path)
        return _mask_index(fs, path, seeds_tree)

    uri = fs.unstrip_protocol(path)
    if kind == "coco":
        info = fs.info(path)
        parsed = read_seed_source(fs, "coco", uri)
        frames = {vid: {s.frame_index for s in seeds} for vid, seeds in parsed.items()}
        return SeedIndex("coco", uri, listing_version([info]), frames=frames)

    if fs.isdir(path):
        listed = fs.find(path, detail=True)
        infos = [i for n, i in listed.items() if not hidden(relative(n, path) or "")]
    else:
        infos = [fs.info(path)]
    return SeedIndex("parquet", uri, listing_version(infos), frames=seed_table_frames(fs, uri))


def attach_seeds(
    found: FoundVideos, index: SeedIndex | None
) -> tuple[list[VideoTask], list[DiscoveryError]]:
    """Give each task its SeedRef; videos without usable seeds become error rows."""
    tasks: list[VideoTask] = []
    errors: list[DiscoveryError] = []
    if index is not None:
        errors.extend(_orphan_seeds(found, index))
    for video_id in sorted(found.tasks):
        task = found.tasks[video_id]
        ref_or_error = _seed_ref(task, index)
        if isinstance(ref_or_error, DiscoveryError):
            errors.append(ref_or_error)
        else:
            tasks.append(dataclasses.replace(task, seeds=ref_or_error))
    return tasks, errors


def _orphan_seeds(found: FoundVideos, index: SeedIndex) -> list[DiscoveryError]:
    """Rows for seeds whose video id names no video of the corpus."""
    errors = []
    # a video that was found but rejected already has its row; its seeds are not orphans
    rejected = {e.video_id for e in found.errors}
    seeded = index.masks.keys() | index.frames.keys()
    for video_id in sorted(seeded - found.tasks.keys() - rejected):
        where = f"{index.uri}/{video_id}" if index.kind == "masks" else index.uri
        errors.append(
            DiscoveryError(
                video_id,
                STAGE_SEEDS,
                SEED_WITHOUT_VIDEO,
                f"{where}: seeds for video {video_id!r}, which is not in the corpus",
            )
        )
    return errors


def _seed_ref(task: VideoTask, index: SeedIndex | None) -> SeedRef | DiscoveryError:
    video_id = task.video_id
    if index is None:
        return DiscoveryError(
            video_id,
            STAGE_SEEDS,
            NO_SEEDS,
            f"{task.uri}: no seeds (no Annotations folder and no seeds_uri)",
        )
    if index.kind == "masks":
        masks = index.masks.get(video_id, {})
        if not masks:
            return DiscoveryError(
                video_id,
                STAGE_SEEDS,
                NO_SEEDS,
                f"{task.uri}: no seed masks in {index.uri}/{video_id}",
            )
        return mask_folder_ref(task, f"{index.uri}/{video_id}", masks)

    frames = sorted(index.frames.get(video_id, ()))
    if not frames:
        return DiscoveryError(
            video_id, STAGE_SEEDS, NO_SEEDS, f"{task.uri}: no seeds for it in {index.uri}"
        )
    count = task.num_frames
    bad = [f for f in frames if f < 0 or (count is not None and f >= count)]
    if bad:
        return DiscoveryError(
            video_id,
            STAGE_SEEDS,
            SEED_FRAME_UNKNOWN,
            f"{index.uri}: seeds on frame indices {bad} of video {video_id!r}, which has "
            f"{count} frames; video skipped",
        )
    return SeedRef(index.kind, index.uri, tuple(frames), version=index.version)


def mask_folder_ref(
    task: VideoTask, folder: str, masks: dict[str, str]
) -> SeedRef | DiscoveryError:
    """The SeedRef of PNG seed masks in ``folder`` (``masks``: file stem -> file name), matched
    to ``task``'s frames by stem (a frame folder) or by frame number (a video file)."""
    positions = {stem: i for i, stem in enumerate(task.frame_names)}
    files: list[tuple[int, str]] = []
    for stem, name in masks.items():
        if task.kind == "frames":
            frame = positions.get(stem)
        else:
            frame = int(stem) if stem.isdigit() else None
        if frame is None:
            expected = "a frame of that name" if task.kind == "frames" else "a frame number"
            return DiscoveryError(
                task.video_id,
                STAGE_SEEDS,
                SEED_FRAME_UNKNOWN,
                f"{folder}/{name}: seed mask names no known frame (expected {expected}); "
                "video skipped",
            )
        files.append((frame, name))
    files.sort()
    return SeedRef("masks", folder, tuple(f for f, _ in files), tuple(files))
