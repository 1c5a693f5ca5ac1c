"""The videos a corpus listing holds, by the form of the corpus.

Forms (detected from one :class:`~pipeline.corpus.listing.Tree`):

- a DAVIS root: ``JPEGImages/<resolution>/<seq>/*.jpg``, seeds in
  ``Annotations/<resolution>/<seq>/*.png``;
- a YouTube-VOS split root: ``JPEGImages/<seq>/*.jpg``, seeds in ``Annotations/<seq>/*.png``;
- a flat folder of frame folders: every folder that directly holds ``*.jpg / *.jpeg / *.png``
  is one video (a corpus URI that is itself a frame folder is one video);
- video files (mp4, m4v, mov, mkv, webm, avi) anywhere under the corpus, in any form above,
  except under ``Annotations/``. A corpus URI that is a video file is one video.

A video id is the path inside the corpus: the sequence name for DAVIS / YouTube-VOS
(``"blackswan"``), the folder path for a flat corpus (``"set1/cat"``), the file path for a
video file (``"clips/cat.mp4"``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stm_core.codec import FRAME_SUFFIXES, natural_key

from .listing import Tree, is_under, parent_folder, suffix_of
from .tasks import (
    BAD_LAYOUT,
    DUPLICATE_FRAME,
    DUPLICATE_VIDEO,
    EMPTY_FILE,
    EMPTY_FRAME_FOLDER,
    STAGE_LIST,
    DiscoveryError,
    VideoTask,
)

__all__ = ["VIDEO_SUFFIXES", "FoundVideos", "find_single_file", "find_videos"]

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")


@dataclass
class FoundVideos:
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


def frame_task(
    video_id: str, folder_uri: str, names: list[str], tree: Tree, folder: str
) -> VideoTask | DiscoveryError:
    frames = sorted((n for n in names if suffix_of(n) in FRAME_SUFFIXES), key=natural_key)
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


def file_task(video_id: str, uri: str, info: Mapping[str, Any]) -> VideoTask | DiscoveryError:
    size = info.get("size")
    if size == 0:
        return DiscoveryError(video_id, STAGE_LIST, EMPTY_FILE, f"{uri}: video file is empty")
    return VideoTask(video_id, "file", uri, size_bytes=None if size is None else int(size))


def find_videos(fs: Any, root: str, tree: Tree, resolution: str, skip: str | None) -> FoundVideos:
    """Turn the listing into tasks. ``skip`` is a folder (relative) holding seeds, not videos."""
    found = FoundVideos()

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
            holds_frames = any(
                suffix_of(n) in FRAME_SUFFIXES for _, names in contents for n in names
            )
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
            keep(frame_task(seq, uri(folder), tree.children(folder)[1], tree, folder))
        not_videos = "Annotations"
    else:
        found.layout = "folders"
        not_videos = skip
        # every folder holding frames is a video; a leaf folder with neither frames nor video
        # files is reported as an empty frame folder (a video whose frames did not arrive)
        for folder in sorted({parent_folder(f) for f in tree.files} | tree.dirs | {""}):
            if is_under(folder, skip):
                continue
            subdirs, names = tree.children(folder)
            has_frames = any(suffix_of(n) in FRAME_SUFFIXES for n in names)
            has_videos = any(suffix_of(n) in VIDEO_SUFFIXES for n in names)
            is_empty_leaf = folder != "" and not subdirs and not has_videos
            if has_frames or is_empty_leaf:
                video_id = folder or posixpath.basename(root)
                keep(frame_task(video_id, uri(folder), names, tree, folder))

    for rel, info in sorted(tree.files.items()):
        if (
            suffix_of(rel) in VIDEO_SUFFIXES
            and not is_under(rel, not_videos)
            and not is_under(rel, skip)
        ):
            keep(file_task(rel, uri(rel), info))
    return found


def find_single_file(fs: Any, root: str, info: Mapping[str, Any], corpus_uri: str) -> FoundVideos:
    """A corpus URI that is one file: a video if its suffix says so, else a layout error."""
    found = FoundVideos(layout="file")
    name = posixpath.basename(root)
    if suffix_of(name) in VIDEO_SUFFIXES:
        task = file_task(name, fs.unstrip_protocol(root), info)
    else:
        task = DiscoveryError(None, STAGE_LIST, BAD_LAYOUT, f"{corpus_uri}: not a video file")
    if isinstance(task, DiscoveryError):
        found.errors.append(task)
    else:
        found.add(task)
    return found
