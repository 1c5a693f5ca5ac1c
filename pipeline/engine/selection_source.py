"""A selection table as a training source: the selected frames of each corpus video, with their
selected masks, for ``stm_core.training.ClipDataset``.

Why in the pipeline and not in ``stm_core``: the frames live in object storage, and reading them
needs fsspec and the corpus readers. Each video is a pair of lazy sequences over its selected
frames only (so clips skip between selected frames, as with on-disk DAVIS sources); the frames
of a video are decoded on first use and the most recently used videos are kept in memory.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.corpus import FrameScale, VideoTask, discover, iter_frames
from pipeline.rle import decode
from pipeline.storage import fs_path, open_fs
from schemas.common import StorageOptions
from schemas.tables import SELECTION
from stm_core.codec import decode_frame
from stm_core.errors import InputError
from stm_core.training.video_clips import LazyColumn

from .. import table_io

log = logging.getLogger(__name__)


@dataclass
class _VideoFrames:
    task: VideoTask
    # frame index -> [(object id, height, width, rle)]
    masks: dict[int, list[tuple[int, int, int, bytes]]]
    indices: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.indices = sorted(self.masks)


class SelectionVideo:
    """One video's selected frames (``frames``) and label maps (``masks``), lazily."""

    def __init__(self, source: SelectionSource, video: _VideoFrames) -> None:
        self._source, self._video = source, video
        self.name = video.task.video_id
        self.frames = LazyColumn(self, 0)
        self.masks = LazyColumn(self, 1)

    def __len__(self) -> int:
        return len(self._video.indices)

    def get(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= position < len(self):
            raise IndexError(position)
        frames, masks = self._source.decoded(self._video)
        return frames[position], masks[position]


class SelectionSource:
    """The videos of a selection table, read from ``corpus_uri``."""

    def __init__(
        self,
        selection_uri: str,
        corpus_uri: str,
        options: StorageOptions | None = None,
        seeds_uri: str | None = None,
        seeds_format: str = "auto",
        max_frame_side: int | None = 480,
        cached_videos: int = 4,
    ) -> None:
        self.options = options or StorageOptions()
        self.max_frame_side = max_frame_side
        self.cached_videos = cached_videos
        self._cache: OrderedDict[str, tuple[list[np.ndarray], list[np.ndarray]]] = OrderedDict()
        table = SELECTION.check(table_io.read_table(selection_uri, self.options), selection_uri)
        found = discover(corpus_uri, self.options, seeds_uri, seeds_format)  # type: ignore[arg-type]
        tasks = {t.video_id: t for t in found.tasks}
        by_video = _masks_by_video(table)
        missing = sorted(set(by_video) - set(tasks))
        if missing:
            log.warning(
                "%s: %d selected video(s) are not in %s, e.g. %s",
                selection_uri,
                len(missing),
                corpus_uri,
                missing[:5],
            )
        self.videos = [
            SelectionVideo(self, _VideoFrames(tasks[v], by_video[v]))
            for v in sorted(by_video)
            if v in tasks
        ]
        if not self.videos:
            raise InputError(selection_uri, f"no selected video is in the corpus {corpus_uri}")

    def __len__(self) -> int:
        return len(self.videos)

    def decoded(self, video: _VideoFrames) -> tuple[list[np.ndarray], list[np.ndarray]]:
        key = video.task.video_id
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        frames = self._read_frames(video)
        if not frames:
            raise InputError(video.task.uri, "no frame decoded")
        height, width = frames[0].shape[:2]
        masks = []
        for index in video.indices:
            objects = video.masks[index]
            native = (objects[0][1], objects[0][2])
            labels = np.zeros(native, np.uint8)
            for object_id, h, w, rle in sorted(objects):
                labels[np.asarray(decode(rle, h, w))] = object_id
            scale = FrameScale(native, (height, width))
            masks.append(scale.to_working(labels))
        self._cache[key] = (frames, masks)
        while len(self._cache) > self.cached_videos:
            self._cache.popitem(last=False)
        return frames, masks

    def _read_frames(self, video: _VideoFrames) -> list[np.ndarray]:
        task = video.task
        fs, _ = open_fs(task.uri, self.options)
        if task.kind == "frames":  # read just the selected frames
            out, scale = [], None
            for index in video.indices:
                uri = f"{task.uri}/{task.frame_files[index]}"
                data = fs.cat_file(fs_path(uri))
                frame = decode_frame(data, uri)
                scale = scale or FrameScale.for_size(frame.shape[:2], self.max_frame_side)
                if scale.resized:
                    frame = decode_frame(data, uri, scale.working)
                out.append(frame)
            return out
        wanted, out = set(video.indices), []
        last = video.indices[-1]
        for index, frame in enumerate(iter_frames(task, fs, self.max_frame_side)):
            if index in wanted:
                out.append(frame)
            if index >= last:
                break
        return out


def _masks_by_video(table: pa.Table) -> dict[str, dict[int, list[tuple[int, int, int, bytes]]]]:
    out: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    columns = ["video_id", "frame_index", "object_id", "height", "width", "rle"]
    for v, f, o, h, w, rle in zip(*(table[c].to_pylist() for c in columns), strict=True):
        out[v][f].append((o, h, w, rle))
    return {v: dict(frames) for v, frames in out.items()}
