"""What is in a corpus and how to read it: the one input side of the pipeline.

- :mod:`.tasks`: the records (video task, seed reference, RLE seed, discovery problem); imports
  nothing of the rest.
- :mod:`.listing`: one fsspec listing of a corpus URI as an in-memory tree.
- :mod:`.layout`: which videos the tree holds (DAVIS, YouTube-VOS, frame folders, video files).
- :mod:`.seed_refs`: which frames of which video are seeded, and where (per task).
- :mod:`.seeds`: each seed format parsed once; a task's seed masks decoded; corrections applied.
- :mod:`.frames`: one video's frames streamed from any filesystem, with the working-size rule.
- :mod:`.discover`: the entry point, ``discover(corpus_uri, ...) -> Discovery``.

Bytes become arrays in :mod:`stm_core.codec`; everything here only finds and fetches them.
"""

from .discover import DatasetVideos, discover, discover_dataset, folder_video
from .frames import (
    FrameScale,
    VideoInfo,
    frame_name,
    frame_names,
    frames_at,
    iter_frames,
    probe,
)
from .layout import VIDEO_SUFFIXES
from .seeds import apply_corrections, complete_correction_frames, parse_coco_seeds, read_seeds
from .tasks import Discovery, DiscoveryError, RleSeed, SeedRef, VideoTask, fingerprint

__all__ = [
    "VIDEO_SUFFIXES",
    "DatasetVideos",
    "Discovery",
    "DiscoveryError",
    "FrameScale",
    "RleSeed",
    "SeedRef",
    "VideoInfo",
    "VideoTask",
    "apply_corrections",
    "complete_correction_frames",
    "discover",
    "discover_dataset",
    "fingerprint",
    "folder_video",
    "frame_name",
    "frame_names",
    "frames_at",
    "iter_frames",
    "parse_coco_seeds",
    "probe",
    "read_seeds",
]
