"""Stream one corpus video's frames from any fsspec filesystem, one frame at a time.

- Frame folders: each image is fetched (``fs.cat_file``) and decoded when it is needed, with a
  small read-ahead (``prefetch`` frames, fetched by threads) so object-store latency overlaps
  with the model's work. Nothing is listed again: names come from the task.
- Video files: decoded with PyAV straight from the filesystem's file object
  (``av.open(fs.open(path, "rb"))``; s3fs files are seekable, so moov-at-end mp4s work too), never
  copied to local disk. Frames come out in presentation order; rotation metadata is not applied
  (masks are drawn on the stored pixel grid, as for images).

Every frame is an ``H x W x 3`` uint8 RGB array. Bad input raises
:class:`~stm_core.errors.InputError` naming the video and the frame, at the moment that frame is
reached (frames before it have been yielded): an unreadable or corrupt frame image, a corrupt or
truncated video (PyAV's ``InvalidDataError`` at open or mid-stream, or fewer frames than the
container states: a cut between two packets ends silently), a video with no frames (PyAV may not
raise on those: the count is checked), frames whose size differs from the first.

Frame size limit (``max_side``): frames whose longer side exceeds it are downscaled (area
averaging) to a working size whose longer side is ``max_side``; see :class:`FrameScale`. The
convention: **propagation runs at the working size, and masks are stored at the native size**
(the probabilities resized bilinearly, ``FrameResult.labels_at``), so stored masks always line
up with the video's own pixels and the ``masks`` table's height/width are the video's. Seeds are
read at the native size and brought to the working size with ``FrameScale.to_working``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from stm_core.codec import (
    DECODE_ERRORS,
    decode_frame,
    image_size,
    resize_labels,
    size_text,
    unreadable,
)
from stm_core.errors import InputError

from ..storage import fs_path
from .tasks import VideoTask

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "FrameScale",
    "VideoInfo",
    "frame_name",
    "frame_names",
    "frames_at",
    "iter_frames",
    "probe",
]

logger = logging.getLogger(__name__)

Size = tuple[int, int]  # (height, width) in pixels
FILE_FRAME_DIGITS = 6  # video file frames are named 000000, 000001, ...


@dataclass(frozen=True)
class FrameScale:
    """Native frame size and the working size the model sees (both ``(height, width)``).

    ``scale`` = working / native along the longer side (1.0 when nothing is resized); the
    shorter side is rounded to the nearest pixel, so per-axis ratios can differ by < 1 pixel.
    """

    native: Size
    working: Size

    @classmethod
    def for_size(cls, native: Size, max_side: int | None) -> FrameScale:
        """The working size for ``native`` under a longer-side limit (None = no limit)."""
        height, width = native
        if max_side is None or max(height, width) <= max_side:
            return cls(native, native)
        if max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
        ratio = max_side / max(height, width)
        return cls(native, (max(1, round(height * ratio)), max(1, round(width * ratio))))

    @property
    def resized(self) -> bool:
        return self.native != self.working

    @property
    def scale(self) -> float:
        return max(self.working) / max(self.native)

    def to_working(self, labels: np.ndarray) -> np.ndarray:
        """A native-size ``H x W`` label map at the working size (nearest: ids never blend)."""
        return resize_labels(labels, self.working)


@dataclass(frozen=True)
class VideoInfo:
    """Native ``(height, width)`` of a video's frames and its frame count when known
    (always for folders; for files as the container states it, None if it does not)."""

    size: Size
    num_frames: int | None


def frame_name(task: VideoTask, index: int) -> str:
    """The name stored with frame ``index``: the file stem for folders, ``000123`` for files."""
    if task.kind == "frames":
        return task.frame_names[index]
    if index < 0:
        raise IndexError(f"frame index {index} < 0")
    return f"{index:0{FILE_FRAME_DIGITS}d}"


def frame_names(task: VideoTask, num_frames: int | None = None) -> tuple[str, ...]:
    """All frame names in order. A video file's count is only known once decoded (or probed),
    so pass ``num_frames`` for files."""
    if task.kind == "frames":
        return task.frame_names
    if num_frames is None:
        raise ValueError(f"{task.uri}: num_frames is needed to name a video file's frames")
    return tuple(frame_name(task, i) for i in range(num_frames))


def _fetch_ahead(fs: AbstractFileSystem, paths: list[str], depth: int) -> Iterator[Future[bytes]]:
    """Futures of ``fs.cat_file(path)`` in order, with at most ``depth`` reads beyond the one
    being handed out: after k frames were taken, at most k + depth reads have started."""
    pool = ThreadPoolExecutor(max_workers=max(1, depth), thread_name_prefix="frame-fetch")
    pending: deque[Future[bytes]] = deque()
    submitted = 0
    try:
        for i in range(len(paths)):
            while submitted < len(paths) and submitted <= i + depth:
                pending.append(pool.submit(fs.cat_file, paths[submitted]))
                submitted += 1
            yield pending.popleft()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _folder_frames(
    task: VideoTask, fs: AbstractFileSystem, max_side: int | None, size: Size | None, prefetch: int
) -> Iterator[np.ndarray]:
    uris = [f"{task.uri}/{name}" for name in task.frame_files]
    if not uris:
        raise InputError(task.uri, f"video {task.video_id!r} has no frames")
    scale: FrameScale | None = None
    fetches = _fetch_ahead(fs, [fs_path(u) for u in uris], max(0, prefetch))
    try:
        for index, (uri, future) in enumerate(zip(uris, fetches, strict=True)):
            where = f"{uri} (video {task.video_id!r}, frame {index})"
            try:
                data = future.result()
            except OSError as exc:
                raise InputError(where, f"cannot read ({type(exc).__name__}: {exc})") from None
            size = _same_size(image_size(data, where), size, where)
            if scale is None:
                scale = FrameScale.for_size(size, max_side)
            yield decode_frame(data, where, scale.working if scale.resized else None)
    finally:
        fetches.close()


def _same_size(native: Size, size: Size | None, where: str) -> Size:
    """The video's size: the first frame's (or the expected one); a frame of another size is an
    error naming it, since one mask per frame must fit every frame."""
    if size is not None and native != size:
        raise InputError(
            where, f"frame size {size_text(native)} (width x height) differs from {size_text(size)}"
        )
    return native if size is None else size


def _open_video(task: VideoTask, fs: AbstractFileSystem):  # -> (file, container)
    import av

    try:
        file = fs.open(fs_path(task.uri), "rb")
    except OSError as exc:
        raise InputError(task.uri, f"cannot open ({type(exc).__name__}: {exc})") from None
    try:
        container = av.open(file, mode="r")
    except (av.FFmpegError, OSError) as exc:
        file.close()
        raise InputError(
            task.uri,
            f"video {task.video_id!r} is not a readable video ({type(exc).__name__}: {exc})",
        ) from None
    if not container.streams.video:
        container.close()
        file.close()
        raise InputError(task.uri, f"video {task.video_id!r} has no video stream")
    return file, container


def _file_frames(
    task: VideoTask,
    fs: AbstractFileSystem,
    max_side: int | None,
    size: Size | None,
    check_frame_count: bool,
) -> Iterator[np.ndarray]:
    import av

    file, container = _open_video(task, fs)
    with file, container:
        stream = container.streams.video[0]
        stated = int(stream.frames or 0)  # 0: the container does not say (mkv, webm)
        decoded = container.decode(stream)
        scale: FrameScale | None = None
        index = 0
        while True:
            where = f"{task.uri} (video {task.video_id!r}, frame {index})"
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as exc:
                raise InputError(
                    where,
                    "cannot decode: the file is corrupt or truncated "
                    f"({type(exc).__name__}: {exc})",
                ) from None
            size = _same_size((frame.height, frame.width), size, where)
            if scale is None:
                scale = FrameScale.for_size(size, max_side)
            if scale.resized:
                height, width = scale.working
                yield frame.to_ndarray(
                    width=width, height=height, format="rgb24", interpolation="AREA"
                )
            else:
                yield frame.to_ndarray(format="rgb24")
            index += 1
    if index == 0:
        raise InputError(task.uri, f"video {task.video_id!r} has no frames (empty or truncated)")
    if check_frame_count and index < stated:
        raise InputError(
            task.uri,
            f"video {task.video_id!r} states {stated} frames but only {index} decode: the file "
            "is truncated (a file cut between packets ends without a decoding error)",
        )


def iter_frames(
    task: VideoTask,
    fs: AbstractFileSystem,
    max_side: int | None = None,
    expected_size: Size | None = None,
    prefetch: int = 2,
    check_frame_count: bool = True,
) -> Iterator[np.ndarray]:
    """Yield the frames of ``task`` in order as ``H x W x 3`` uint8 RGB arrays.

    ``fs`` is the corpus's filesystem (the task's URIs are paths in it). ``max_side`` limits the
    longer side (see :class:`FrameScale`; the yielded frames are at the working size).
    ``expected_size`` is the native ``(height, width)``, e.g. from :func:`probe`; when None the
    first frame fixes it. ``prefetch`` is the read-ahead of frame folders (0 = fetch each frame
    only when asked for it); video files are read through the file object's own buffer.

    ``check_frame_count``: a video file whose container states more frames than decode raises
    InputError after its last frame (a truncated file can end cleanly between two packets).
    Turn it off for corpora of mp4s cut without re-encoding, whose edit lists may hide frames
    the header still counts.
    """
    if task.kind == "frames":
        return _folder_frames(task, fs, max_side, expected_size, prefetch)
    if task.kind == "file":
        return _file_frames(task, fs, max_side, expected_size, check_frame_count)
    raise ValueError(f"unknown task kind {task.kind!r}")


def probe(task: VideoTask, fs: AbstractFileSystem) -> VideoInfo:
    """Native frame size and count, cheaply: the first image's header for a folder; for a file,
    the container's frame count and the first decoded frame's size (so an empty or unreadable
    video fails here, before any model work)."""
    if task.kind == "frames":
        if not task.frame_files:
            raise InputError(task.uri, f"video {task.video_id!r} has no frames")
        uri = f"{task.uri}/{task.frame_files[0]}"
        try:
            with fs.open(fs_path(uri), "rb") as file, Image.open(file) as image:
                size = (image.height, image.width)
        except DECODE_ERRORS as exc:
            raise unreadable(f"{uri} (video {task.video_id!r}, frame 0)", "image", exc) from None
        return VideoInfo(size, len(task.frame_files))

    import av

    file, container = _open_video(task, fs)
    with file, container:
        stream = container.streams.video[0]
        stated = int(stream.frames or 0)
        try:
            first = next(container.decode(stream), None)
        except (av.FFmpegError, OSError) as exc:
            raise InputError(
                f"{task.uri} (video {task.video_id!r}, frame 0)",
                f"cannot decode: the file is corrupt or truncated ({type(exc).__name__}: {exc})",
            ) from None
    if first is None:
        raise InputError(task.uri, f"video {task.video_id!r} has no frames (empty or truncated)")
    return VideoInfo((first.height, first.width), stated or None)


def frames_at(
    task: VideoTask,
    fs: AbstractFileSystem,
    indices: Iterable[int],
    max_side: int | None = None,
    expected_size: Size | None = None,
) -> dict[int, np.ndarray]:
    """Frame index -> frame for just ``indices`` (the seed frames fine-tuning trains on), read
    in one pass that stops at the last of them, so a propagation pass after it streams the
    video as usual. An index past the video's end is missing from the result."""
    wanted = set(indices)
    if not wanted:
        return {}
    last = max(wanted)
    out: dict[int, np.ndarray] = {}
    frames = iter_frames(task, fs, max_side, expected_size)
    try:
        for t, frame in enumerate(frames):
            if t in wanted:
                out[t] = frame
            if t >= last:
                break
    finally:
        frames.close()  # stops a folder's read-ahead threads or a file's decoder now
    return out
