"""What a corpus holds, as small picklable records: videos to label, where their seeds are,
and the problems found while looking. Imports nothing of the rest of the package, so every
other module (listing, seeds, frames, the job, the engine) can use these types without cycles.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

__all__ = [
    "Discovery",
    "DiscoveryError",
    "RleSeed",
    "SeedKind",
    "SeedRef",
    "SeedsFormat",
    "VideoTask",
    "fingerprint",
]

SeedKind = Literal["masks", "coco", "parquet"]
SeedsFormat = Literal["auto", "masks", "coco", "parquet"]

# DiscoveryError.stage: the errors table's stage names (schemas.tables.ERROR_STAGES)
STAGE_LIST = "discover"
STAGE_SEEDS = "seed"
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


class RleSeed(NamedTuple):
    """One object's seed mask on one frame, still RLE-encoded (COCO compressed counts)."""

    frame_index: int
    object_id: int
    height: int
    width: int
    counts: bytes


@dataclass(frozen=True)
class SeedRef:
    """Where one video's seeds are: read them with :func:`pipeline.corpus.seeds.read_seeds`.

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
        :func:`pipeline.corpus.frames.frame_names`)."""
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
