"""Training videos from a dataset folder (DAVIS / YouTube-VOS), found by :mod:`pipeline.corpus`.

Why here and not in ``stm_core.training``: finding the videos of a folder is the input side's
job, done once in the project by ``pipeline.corpus``; ``stm_core`` only samples clips from
the frame and mask files it is given.
"""

from __future__ import annotations

from pathlib import Path

from stm_core.errors import InputError
from stm_core.training.video_clips import FolderVideo, FolderVideoSource

from ..corpus import discover_dataset
from ..storage import fs_path, split_uri

__all__ = ["folder_video_source"]


def folder_video_source(
    root: str | Path, resolution: str = "480p", min_frames: int = 1
) -> FolderVideoSource:
    """Every video of a local dataset ``root`` with at least ``min_frames`` annotated frames,
    each as its annotated frames and their masks (files read when a clip is sampled)."""
    uri = str(root)
    if split_uri(uri)[0] != "file":
        raise InputError(uri, "training folders must be on local disk")
    dataset = discover_dataset(uri, resolution)
    videos = []
    for task in dataset.tasks:
        ref = task.seeds
        if ref is None or task.kind != "frames":
            continue  # a video file inside a dataset root has no per-frame annotations
        videos.append(
            FolderVideo(
                name=task.video_id,
                frame_paths=tuple(
                    Path(fs_path(f"{task.uri}/{task.frame_files[t]}")) for t, _ in ref.mask_files
                ),
                mask_paths=tuple(Path(fs_path(f"{ref.uri}/{name}")) for _, name in ref.mask_files),
            )
        )
    return FolderVideoSource(videos, uri, min_frames)
