"""Corpus discovery: one listing of a corpus URI -> small, picklable per-video tasks.

The corpus forms and video ids are described in :mod:`pipeline.corpus.layout`, the seed sources
in :mod:`pipeline.corpus.seed_refs`. Problems become :class:`DiscoveryError` rows and discovery
goes on with the other videos: an unreadable corpus or seed URI, an empty frame folder, a seed
for a video that does not exist, a video with no seeds (not a task: nothing to propagate from),
a seed on a frame a folder does not have. A seed source that cannot be read at all gives one
row, not one per video, and no tasks. Frames and videos are not opened here; their content is
checked when read.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

from schemas.common import StorageOptions
from stm_core.codec import MASK_SUFFIX
from stm_core.errors import InputError

from .layout import VIDEO_SUFFIXES, find_single_file, find_videos, frame_task
from .listing import list_tree, open_corpus_fs, relative, suffix_of
from .seed_refs import attach_seeds, index_seeds, mask_folder_ref
from .tasks import (
    BAD_SEED_SOURCE,
    NO_SEEDS,
    NO_VIDEOS,
    SEED_WITHOUT_VIDEO,
    STAGE_LIST,
    STAGE_SEEDS,
    UNREADABLE_URI,
    Discovery,
    DiscoveryError,
    SeedsFormat,
    VideoTask,
)

__all__ = ["DatasetVideos", "discover", "discover_dataset", "folder_video"]

logger = logging.getLogger(__name__)


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
        fs, root = open_corpus_fs(corpus_uri, options)
        tree, single_file = list_tree(fs, root)
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
            skip = relative(open_corpus_fs(seeds_uri, options)[1], root)
        except Exception:  # noqa: BLE001 - reported below when the seeds are read
            skip = None

    if single_file is not None:
        found = find_single_file(fs, root, single_file, corpus_uri)
    else:
        found = find_videos(fs, root, tree, resolution, skip)
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
        index = index_seeds(fs, root, tree, found, seeds_uri, seeds_format, options)
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

    tasks, seed_errors = attach_seeds(found, index)
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


def folder_video(
    frames_uri: str,
    seeds_uri: str | None = None,
    storage_options: StorageOptions | None = None,
    name: str | None = None,
) -> tuple[VideoTask, Any]:
    """One folder of frames as a task, with the PNG seed masks of ``seeds_uri`` (named like the
    frames: ``00000.png`` seeds frame ``00000.jpg``), and the filesystem to read it through.

    What the CLI's single-video commands and the evaluation of a folder use: the same task,
    seed reader and frame iterator as a corpus job. Unlike :func:`discover`, a problem raises
    InputError naming the folder or file (there is no errors table to put it in).
    """
    options = storage_options or StorageOptions()
    fs, root = open_corpus_fs(frames_uri, options)
    try:
        tree, single_file = list_tree(fs, root)
    except OSError as exc:
        raise InputError(frames_uri, f"cannot list ({type(exc).__name__}: {exc})") from None
    if single_file is not None:
        raise InputError(frames_uri, "is a file, not a folder of frames")
    _, names = tree.children("")
    task = frame_task(name or posixpath.basename(root), fs.unstrip_protocol(root), names, tree, "")
    if isinstance(task, DiscoveryError):
        raise InputError(None, task.message)
    if seeds_uri is None:
        return task, fs
    seeds_fs, seeds_root = open_corpus_fs(seeds_uri, options)
    try:
        seeds_tree, seeds_file = list_tree(seeds_fs, seeds_root)
    except OSError as exc:
        raise InputError(seeds_uri, f"cannot list ({type(exc).__name__}: {exc})") from None
    if seeds_file is not None or seeds_fs.protocol != fs.protocol:
        raise InputError(seeds_uri, "seed masks must be a folder on the frames' filesystem")
    masks = {
        posixpath.splitext(n)[0]: n
        for n in seeds_tree.children("")[1]
        if suffix_of(n) == MASK_SUFFIX
    }
    if not masks:
        raise InputError(seeds_uri, f"no seed masks (*{MASK_SUFFIX}) named like a frame")
    ref = mask_folder_ref(task, seeds_fs.unstrip_protocol(seeds_root), masks)
    if isinstance(ref, DiscoveryError):
        raise InputError(None, ref.message)
    return dataclasses.replace(task, seeds=ref), fs


DATASET_LAYOUTS = ("davis", "youtube-vos")


@dataclass(frozen=True)
class DatasetVideos:
    """The videos of a DAVIS / YouTube-VOS root: those with annotation masks (as tasks whose
    seeds are every annotated frame), the ids of those without, and the filesystem."""

    tasks: list[VideoTask]
    unannotated: list[str]
    fs: Any


def discover_dataset(
    root: str, resolution: str = "480p", storage_options: StorageOptions | None = None
) -> DatasetVideos:
    """Every video of a dataset root, for evaluation and training, where a video silently
    dropped would change what a number means: a root of another form, or a video that cannot
    be listed (an empty sequence folder, two frames with one name), raises InputError.
    Annotations without a video are logged and skipped."""
    options = storage_options or StorageOptions()
    found = discover(root, options, resolution=resolution)
    if found.layout not in DATASET_LAYOUTS:
        listing = next((e for e in found.errors if found.layout == "unknown"), None)
        if listing is not None:  # the root does not list, or looks like DAVIS without its size
            raise InputError(None, listing.message)
        raise InputError(root, "has no JPEGImages folder: not a DAVIS or YouTube-VOS root")
    unannotated: list[str] = []
    for error in found.errors:
        if error.error_type == NO_SEEDS and error.video_id is not None:
            unannotated.append(error.video_id)
        elif error.error_type == SEED_WITHOUT_VIDEO:
            logger.warning("%s", error.message)
        else:
            raise InputError(None, error.message)
    return DatasetVideos(found.tasks, sorted(unannotated), open_corpus_fs(root, options)[0])
