"""Corpus discovery: one listing of a corpus URI -> small, picklable per-video tasks.

A corpus is any fsspec URI (``s3://bucket/corpus``, ``gs://...``, ``file://...``, a local path)
in one of these forms, detected from a single ``fs.find(root, detail=True, withdirs=True)``
(one paginated listing, not one call per video, so 10,000 videos on S3 list in seconds):

- a DAVIS root: ``JPEGImages/<resolution>/<seq>/*.jpg``, seeds in
  ``Annotations/<resolution>/<seq>/*.png``;
- a YouTube-VOS split root: ``JPEGImages/<seq>/*.jpg``, seeds in ``Annotations/<seq>/*.png``;
- a flat folder of frame folders: every folder that directly holds ``*.jpg / *.jpeg / *.png``
  is one video (a corpus URI that is itself a frame folder is one video);
- video files (mp4, m4v, mov, mkv, webm, avi) anywhere under the corpus, in any form above,
  except under ``Annotations/``. A corpus URI that is a video file is one video.

A video id is the path inside the corpus: the sequence name for DAVIS / YouTube-VOS
(``"blackswan"``), the folder path for a flat corpus (``"set1/cat"``), the file path for a
video file (``"clips/cat.mp4"``). COCO and Parquet seeds refer to videos by this id.

Seeds (``seeds_format``): ``"masks"`` (PNG per annotated frame; by default the layout's
``Annotations`` folder, or ``seeds_uri``: a folder of ``<video id>/<frame stem>.png``, where a
video file's frames are named ``000000, 000001, ...``), ``"coco"`` (a JSON file, see
:func:`pipeline.seed_readers.parse_coco_seeds`) or ``"parquet"`` (a file or folder with the
``SEEDS_SCHEMA`` columns). ``"auto"`` picks by the ``seeds_uri`` suffix (``.json``, ``.parquet``
/ ``.pq``), else by what the folder holds. Seeds must live on the corpus's filesystem: the worker
reads them through the same ``fs``. Tasks carry a reference to their seeds, never decoded masks.

Problems become :class:`DiscoveryError` rows and discovery goes on with the other videos:
an unreadable corpus or seed URI, an empty frame folder, a seed for a video that does not exist,
a video with no seeds (not a task: nothing to propagate from), a seed on a frame a folder does
not have. A seed source that cannot be read at all gives one row, not one per video, and no
tasks. Frames and videos are not opened here; their content is checked when read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.common import StorageOptions
from stm_core.errors import InputError
from stm_core.io import FRAME_SUFFIXES, natural_key

from .seed_readers import RleSeed, parse_coco_seeds, seed_table_frames
from .storage import open_fs, split_uri

__all__ = [
    "VIDEO_SUFFIXES",
    "Discovery",
    "DiscoveryError",
    "SeedRef",
    "VideoTask",
    "discover",
]

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
MASK_SUFFIX = ".png"
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
SeedKind = Literal["masks", "coco", "parquet"]
SeedsFormat = Literal["auto", "masks", "coco", "parquet"]

# DiscoveryError.stage
STAGE_LIST = "discover"
STAGE_SEEDS = "seeds"
# DiscoveryError.error_type
UNREADABLE_URI = "unreadable_uri"
BAD_LAYOUT = "bad_layout"
EMPTY_FRAME_FOLDER = "empty_frame_folder"
DUPLICATE_FRAME = "duplicate_frame_name"
DUPLICATE_VIDEO = "duplicate_video_id"
EMPTY_FILE = "empty_file"
BAD_SEED_SOURCE = "bad_seed_source"
SEED_WITHOUT_VIDEO = "seed_without_video"
SEED_FRAME_UNKNOWN = "seed_frame_unknown"
NO_SEEDS = "no_seeds"
NO_VIDEOS = "no_videos"


@dataclass(frozen=True)
class SeedRef:
    """Where one video's seeds are: read them with :func:`pipeline.seed_readers.read_seeds`.

    ``uri``: the annotation folder (``masks``) or the seed file / folder (``coco``, ``parquet``,
    whose rows for this video are those whose video id is the task's). ``mask_files``: (frame
    index, PNG file name in ``uri``) for ``masks``. ``frames``: the seeded frame indices,
    ascending. ``version``: size + ETag/mtime of a seed file, so worker caches notice a rewrite.
    """

    kind: SeedKind
    uri: str
    frames: tuple[int, ...]
    mask_files: tuple[tuple[int, str], ...] = ()
    version: str = ""


@dataclass(frozen=True)
class VideoTask:
    """One video to label. Small and picklable: names, not arrays (a few KB for 1,000 frames).

    ``uri`` is the frame folder (``kind="frames"``; frames are ``uri/<frame_files[i]>`` in
    :func:`~stm_core.io.natural_key` order) or the video file (``kind="file"``). ``size_bytes``
    is the listed size of the file or the sum of the frames.
    """

    video_id: str
    kind: Literal["frames", "file"]
    uri: str
    frame_files: tuple[str, ...] = ()
    seeds: SeedRef | None = None
    size_bytes: int | None = None
    # human corrections to apply as seeds on their frames (the data engine's corrections table)
    corrections: tuple[RleSeed, ...] = ()

    @property
    def num_frames(self) -> int | None:
        """Frame count of a frame folder; None for a video file (known only once decoded)."""
        return len(self.frame_files) if self.kind == "frames" else None

    @property
    def frame_names(self) -> tuple[str, ...]:
        """Stems of a folder's frames (``00000``, ...); empty for a video file (see
        :func:`pipeline.video_readers.frame_names`)."""
        return tuple(posixpath.splitext(f)[0] for f in self.frame_files)


def fingerprint(task: VideoTask) -> str:
    """A short hash of what the listing says about a video's inputs: its frame files (or file),
    their listed size, and its seed source (files, seeded frames, seed file version). A video
    whose fingerprint differs from the one recorded when it was labeled has changed. Content
    rewritten in place at the same size is not seen (the listing carries no checksum)."""
    seeds = task.seeds
    parts = [
        task.kind,
        task.uri,
        "\n".join(task.frame_files),
        str(task.size_bytes),
        ""
        if seeds is None
        else json.dumps(
            [
                seeds.kind,
                seeds.uri,
                list(seeds.frames),
                [list(m) for m in seeds.mask_files],
                seeds.version,
            ]
        ),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DiscoveryError:
    """A row for the errors table: ``video_id`` is None when no single video is concerned."""

    video_id: str | None
    stage: str
    error_type: str
    message: str


@dataclass
class Discovery:
    """Tasks sorted by video id, the problems found, and the detected corpus form
    (``davis``, ``youtube-vos``, ``folders``, ``file`` or ``unknown``)."""

    tasks: list[VideoTask] = field(default_factory=list)
    errors: list[DiscoveryError] = field(default_factory=list)
    layout: str = "unknown"


# ---------------------------------------------------------------------------------------------
# listing


def _open_fs(uri: str, options: StorageOptions) -> tuple[Any, str]:
    """:func:`pipeline.storage.open_fs` with the path normalised as the filesystem lists it
    (absolute for local paths, no trailing slash), so listed names can be made relative."""
    fs, path = open_fs(uri, options)
    return fs, fs._strip_protocol(path).rstrip("/") or "/"


@dataclass
class _Tree:
    """One listing relative to a root: files (rel path -> info) and folders (rel paths).

    ``children`` answers from an index built once, so a corpus of 10,000 folders and a
    million frames is walked in linear time.
    """

    files: dict[str, Mapping[str, Any]]
    dirs: set[str]
    _index: dict[str, tuple[list[str], list[str]]] | None = None

    def children(self, folder: str) -> tuple[list[str], list[str]]:
        """Names of the sub-folders (sorted) and of the files (natural order) directly in
        ``folder`` ("" = the root)."""
        if self._index is None:
            index: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
            for d in self.dirs:
                index[_parent(d)][0].append(posixpath.basename(d))
            for f in self.files:
                index[_parent(f)][1].append(posixpath.basename(f))
            for subdirs, names in index.values():
                subdirs.sort()
                names.sort(key=natural_key)
            self._index = dict(index)
        return self._index.get(folder, ([], []))


def _parent(rel: str) -> str:
    return posixpath.dirname(rel)


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _list(fs: Any, root: str) -> tuple[_Tree, Mapping[str, Any] | None]:
    """List everything under ``root`` once. Returns the tree and, when ``root`` is a file, its
    info (the tree is then empty). A missing root raises FileNotFoundError."""
    fs.invalidate_cache(root)  # s3fs/gcsfs keep listings; another writer may have added videos
    entries = fs.find(root, detail=True, withdirs=True)
    if not entries and not fs.exists(root):
        raise FileNotFoundError(f"{root} does not exist")
    if len(entries) == 1 and root in entries and entries[root].get("type") == "file":
        return _Tree({}, set()), entries[root]
    files: dict[str, Mapping[str, Any]] = {}
    dirs: set[str] = set()
    prefix = root + "/"
    for name, info in entries.items():
        name = name.rstrip("/")
        if not name.startswith(prefix):
            continue  # the root itself
        rel = name[len(prefix) :]
        if _hidden(rel):
            continue
        if info.get("type") == "directory":
            dirs.add(rel)
        else:
            files[rel] = info
    # Object stores may list keys without their "folders", or only some of them (s3fs's
    # withdirs listing can hold "a/b/c" but not "a/b" or "a"), so every ancestor of every entry
    # is added; ``walked`` marks folders whose ancestors are already in, to stay linear.
    walked: set[str] = set()
    for rel in [*files, *dirs]:
        parent = _parent(rel)
        while parent and parent not in walked:
            walked.add(parent)
            parent = _parent(parent)
    dirs |= walked
    return _Tree(files, dirs), None


def _version(infos: Iterable[Mapping[str, Any]]) -> str:
    """A short fingerprint of files (name, size, ETag or mtime) for cache invalidation."""
    digest = hashlib.sha1()
    for info in sorted(infos, key=lambda i: str(i.get("name"))):
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        digest.update(f"{info.get('name')}|{info.get('size')}|{stamp}\n".encode())
    return digest.hexdigest()[:16]


def _suffix(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _under(rel: str, folder: str | None) -> bool:
    return folder is not None and (folder == "" or rel == folder or rel.startswith(folder + "/"))


# ---------------------------------------------------------------------------------------------
# videos


@dataclass
class _Found:
    """Videos found by the listing, before seeds are attached."""

    tasks: dict[str, VideoTask] = field(default_factory=dict)
    errors: list[DiscoveryError] = field(default_factory=list)
    layout: str = "unknown"
    masks_dir: str | None = None  # the layout's annotation root, relative to the corpus root

    def add(self, task: VideoTask) -> None:
        if task.video_id in self.tasks:
            other = self.tasks.pop(task.video_id).uri
            self.errors.append(
                DiscoveryError(
                    task.video_id,
                    STAGE_LIST,
                    DUPLICATE_VIDEO,
                    f"{task.uri} and {other} have the same video id; both skipped",
                )
            )
            return
        self.tasks[task.video_id] = task


def _frame_task(
    video_id: str, folder_uri: str, names: list[str], tree: _Tree, folder: str
) -> VideoTask | DiscoveryError:
    frames = sorted((n for n in names if _suffix(n) in FRAME_SUFFIXES), key=natural_key)
    if not frames:
        shown = ", ".join(names[:5]) if names else "nothing"
        return DiscoveryError(
            video_id,
            STAGE_LIST,
            EMPTY_FRAME_FOLDER,
            f"{folder_uri}: no frames (*.jpg, *.jpeg, *.png); found {shown}",
        )
    seen: dict[str, str] = {}
    for name in frames:
        stem = posixpath.splitext(name)[0]
        if stem in seen:
            return DiscoveryError(
                video_id,
                STAGE_LIST,
                DUPLICATE_FRAME,
                f"{folder_uri}: frames {seen[stem]} and {name} have the same name; "
                "which one is the frame?",
            )
        seen[stem] = name
    size = sum(int(tree.files[posixpath.join(folder, n)].get("size") or 0) for n in frames)
    return VideoTask(video_id, "frames", folder_uri, tuple(frames), size_bytes=size)


def _file_task(video_id: str, uri: str, info: Mapping[str, Any]) -> VideoTask | DiscoveryError:
    size = info.get("size")
    if size == 0:
        return DiscoveryError(video_id, STAGE_LIST, EMPTY_FILE, f"{uri}: video file is empty")
    return VideoTask(video_id, "file", uri, size_bytes=None if size is None else int(size))


def _find_videos(fs: Any, root: str, tree: _Tree, resolution: str, skip: str | None) -> _Found:
    """Turn the listing into tasks. ``skip`` is a folder (relative) holding seeds, not videos."""
    found = _Found()

    def uri(rel: str) -> str:
        return fs.unstrip_protocol(posixpath.join(root, rel) if rel else root)

    def keep(result: VideoTask | DiscoveryError) -> None:
        if isinstance(result, DiscoveryError):
            found.errors.append(result)
        else:
            found.add(result)

    frame_root: str | None = None
    if "JPEGImages" in tree.dirs:
        subdirs, _ = tree.children("JPEGImages")
        if resolution in subdirs:
            found.layout, frame_root = "davis", f"JPEGImages/{resolution}"
            found.masks_dir = f"Annotations/{resolution}"
        else:
            contents = [tree.children(f"JPEGImages/{d}") for d in subdirs]
            holds_frames = any(_suffix(n) in FRAME_SUFFIXES for _, names in contents for n in names)
            if subdirs and not holds_frames and all(sub for sub, _ in contents):
                found.errors.append(
                    DiscoveryError(
                        None,
                        STAGE_LIST,
                        BAD_LAYOUT,
                        f"{uri('JPEGImages')}: looks like DAVIS but has no {resolution!r} "
                        f"folder (found: {', '.join(subdirs)})",
                    )
                )
                return found
            found.layout, frame_root = "youtube-vos", "JPEGImages"
            found.masks_dir = "Annotations"
        if found.masks_dir not in tree.dirs:
            found.masks_dir = None
        for seq in tree.children(frame_root)[0]:
            folder = f"{frame_root}/{seq}"
            keep(_frame_task(seq, uri(folder), tree.children(folder)[1], tree, folder))
        not_videos = "Annotations"
    else:
        found.layout = "folders"
        not_videos = skip
        # every folder holding frames is a video; a leaf folder with neither frames nor video
        # files is reported as an empty frame folder (a video whose frames did not arrive)
        for folder in sorted({_parent(f) for f in tree.files} | tree.dirs | {""}):
            if _under(folder, skip):
                continue
            subdirs, names = tree.children(folder)
            has_frames = any(_suffix(n) in FRAME_SUFFIXES for n in names)
            has_videos = any(_suffix(n) in VIDEO_SUFFIXES for n in names)
            is_empty_leaf = folder != "" and not subdirs and not has_videos
            if has_frames or is_empty_leaf:
                video_id = folder or posixpath.basename(root)
                keep(_frame_task(video_id, uri(folder), names, tree, folder))

    for rel, info in sorted(tree.files.items()):
        if _suffix(rel) in VIDEO_SUFFIXES and not _under(rel, not_videos) and not _under(rel, skip):
            keep(_file_task(rel, uri(rel), info))
    return found


# ---------------------------------------------------------------------------------------------
# seeds


@dataclass
class _SeedIndex:
    """Seeds found per video id before matching: PNG masks (stem -> file name) or frames."""

    kind: SeedKind
    uri: str  # the seed file, or the masks root folder
    version: str = ""
    masks: dict[str, dict[str, str]] = field(default_factory=dict)  # video -> stem -> file
    frames: dict[str, set[int]] = field(default_factory=dict)  # video -> frame indices


def _mask_index(fs: Any, masks_root: str, tree: _Tree) -> _SeedIndex:
    """Group ``<video id>/<stem>.png`` files under a masks root (a tree relative to it)."""
    index = _SeedIndex("masks", fs.unstrip_protocol(masks_root))
    for rel in sorted(tree.files, key=natural_key):
        if _suffix(rel) == MASK_SUFFIX and "/" in rel:
            name = posixpath.basename(rel)
            index.masks.setdefault(_parent(rel), {})[posixpath.splitext(name)[0]] = name
    return index


def _subtree(tree: _Tree, folder: str) -> _Tree:
    prefix = folder + "/"
    return _Tree(
        {k[len(prefix) :]: v for k, v in tree.files.items() if k.startswith(prefix)},
        {d[len(prefix) :] for d in tree.dirs if d.startswith(prefix)},
    )


def _seed_kind(seeds_uri: str, seeds_format: SeedsFormat, fs: Any, path: str) -> SeedKind:
    if seeds_format != "auto":
        return seeds_format
    suffix = _suffix(path)
    if suffix == ".json":
        return "coco"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if fs.isdir(path):
        has_parquet = any(_suffix(p) in PARQUET_SUFFIXES for p in fs.find(path))
        return "parquet" if has_parquet else "masks"
    raise InputError(
        seeds_uri, "cannot tell the seed format: expected a .json, a .parquet or a folder"
    )


def _load_seed_index(
    fs: Any,
    root: str,
    tree: _Tree,
    found: _Found,
    seeds_uri: str | None,
    seeds_format: SeedsFormat,
    options: StorageOptions,
) -> _SeedIndex | None:
    """Read what discovery needs of the seed source (video ids and frames, not masks)."""
    if seeds_uri is None:
        if seeds_format not in ("auto", "masks"):
            raise InputError(None, f"seeds_format={seeds_format!r} needs a seeds_uri")
        if found.masks_dir is None:
            return None
        return _mask_index(
            fs, posixpath.join(root, found.masks_dir), _subtree(tree, found.masks_dir)
        )

    protocol, _ = split_uri(seeds_uri)
    if protocol != split_uri(fs.unstrip_protocol(root))[0]:
        raise InputError(seeds_uri, "seeds must be on the corpus's filesystem (same scheme)")
    _, path = _open_fs(seeds_uri, options)
    fs.invalidate_cache(path)  # a seed file rewritten since the last look must not look unchanged
    kind = _seed_kind(seeds_uri, seeds_format, fs, path)
    if kind == "masks":
        rel = _relative(path, root)
        if rel is not None:
            return _mask_index(fs, path, _subtree(tree, rel) if rel else tree)
        seeds_tree, _ = _list(fs, path)
        return _mask_index(fs, path, seeds_tree)

    uri = fs.unstrip_protocol(path)
    if kind == "coco":
        info = fs.info(path)
        raw = fs.cat_file(path)
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(uri, f"is not valid JSON ({exc})") from None
        parsed = parse_coco_seeds(document, uri)
        frames = {vid: {s.frame_index for s in seeds} for vid, seeds in parsed.items()}
        return _SeedIndex("coco", uri, _version([info]), frames=frames)

    if fs.isdir(path):
        listed = fs.find(path, detail=True)
        infos = [i for n, i in listed.items() if not _hidden(_relative(n, path) or "")]
    else:
        infos = [fs.info(path)]
    return _SeedIndex("parquet", uri, _version(infos), frames=seed_table_frames(fs, uri))


def _relative(path: str, root: str) -> str | None:
    if path == root:
        return ""
    return path[len(root) + 1 :] if path.startswith(root + "/") else None


def _attach_seeds(
    found: _Found, index: _SeedIndex | None
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
            tasks.append(_with_seeds(task, ref_or_error))
    return tasks, errors


def _orphan_seeds(found: _Found, index: _SeedIndex) -> list[DiscoveryError]:
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


def _with_seeds(task: VideoTask, ref: SeedRef) -> VideoTask:
    return VideoTask(task.video_id, task.kind, task.uri, task.frame_files, ref, task.size_bytes)


def _seed_ref(task: VideoTask, index: _SeedIndex | None) -> SeedRef | DiscoveryError:
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
        folder = f"{index.uri}/{video_id}"
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
                    video_id,
                    STAGE_SEEDS,
                    SEED_FRAME_UNKNOWN,
                    f"{folder}/{name}: seed mask names no known frame (expected {expected}); "
                    "video skipped",
                )
            files.append((frame, name))
        files.sort()
        return SeedRef("masks", folder, tuple(f for f, _ in files), tuple(files))

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


# ---------------------------------------------------------------------------------------------
# entry point


def discover(
    corpus_uri: str,
    storage_options: StorageOptions | None = None,
    seeds_uri: str | None = None,
    seeds_format: SeedsFormat = "auto",
    resolution: str = "480p",
) -> Discovery:
    """List ``corpus_uri`` once and return its videos as tasks, plus the problems found.

    ``resolution`` picks the DAVIS ``JPEGImages/<resolution>`` folder. See the module docstring
    for the corpus forms, video ids, seed sources and which problems become error rows. Nothing
    raises for bad input; a bug (or a bad ``seeds_format`` value) still does.
    """
    if seeds_format not in ("auto", "masks", "coco", "parquet"):
        raise ValueError(f"seeds_format must be auto, masks, coco or parquet, not {seeds_format!r}")
    started = time.perf_counter()
    options = storage_options or StorageOptions()
    result = Discovery()
    try:
        fs, root = _open_fs(corpus_uri, options)
        tree, single_file = _list(fs, root)
    except Exception as exc:  # noqa: BLE001 - any failure to list is the corpus's row
        logger.warning("cannot list corpus %s", corpus_uri, exc_info=True)
        result.errors.append(
            DiscoveryError(
                None,
                STAGE_LIST,
                UNREADABLE_URI,
                f"{corpus_uri}: cannot list ({type(exc).__name__}: {exc})",
            )
        )
        return result

    skip = None
    if seeds_uri is not None:
        try:
            skip = _relative(_open_fs(seeds_uri, options)[1], root)
        except Exception:  # noqa: BLE001 - reported below when the seeds are read
            skip = None

    if single_file is not None:
        found = _Found(layout="file")
        name = posixpath.basename(root)
        if _suffix(name) in VIDEO_SUFFIXES:
            task = _file_task(name, fs.unstrip_protocol(root), single_file)
        else:
            task = DiscoveryError(None, STAGE_LIST, BAD_LAYOUT, f"{corpus_uri}: not a video file")
        if isinstance(task, DiscoveryError):
            found.errors.append(task)
        else:
            found.add(task)
    else:
        found = _find_videos(fs, root, tree, resolution, skip)
    result.layout = found.layout
    result.errors.extend(found.errors)
    if not found.tasks and not found.errors:
        result.errors.append(
            DiscoveryError(
                None,
                STAGE_LIST,
                NO_VIDEOS,
                f"{corpus_uri}: no videos found (no frame folders, no "
                f"{', '.join(VIDEO_SUFFIXES)} files)",
            )
        )
        return result

    try:
        index = _load_seed_index(fs, root, tree, found, seeds_uri, seeds_format, options)
    except Exception as exc:  # noqa: BLE001 - an unusable seed source is one row
        source = seeds_uri or corpus_uri
        logger.warning("cannot read seeds %s", source, exc_info=True)
        result.errors.append(
            DiscoveryError(
                None,
                STAGE_SEEDS,
                UNREADABLE_URI if isinstance(exc, OSError) else BAD_SEED_SOURCE,
                f"{source}: cannot read seeds ({type(exc).__name__}: {exc}); no video "
                f"of {len(found.tasks)} can be labelled",
            )
        )
        return result

    tasks, seed_errors = _attach_seeds(found, index)
    result.tasks = tasks
    result.errors.extend(seed_errors)
    logger.info(
        "discovered %d videos (%s) in %s with %d problems in %.2f s",
        len(tasks),
        result.layout,
        corpus_uri,
        len(result.errors),
        time.perf_counter() - started,
    )
    return result
