"""See what a run labelled: one video's frames with its masks painted on, as a GIF or an MP4,
plus a contact sheet PNG of about a dozen frames for a glance (or a bug report).

Frames come from the corpus the run labelled, found through the run record's config
(``corpus_uri``, seeds; the store settings of :meth:`LabelRun.corpus_options`) with
:func:`pipeline.corpus.discover` and read with :func:`pipeline.corpus.iter_frames` at their
native size, the size masks are stored at.
The corpus must still hold the video as it was: frames of another size are refused.

Overlay (:func:`overlay`): each object's pixels are blended with its DAVIS palette colour
(object k gets ``DAVIS_PALETTE[k]``, as in the exported PNGs) at ``alpha`` 0.5, and an inner
outline a few pixels thick (:func:`outline`) is drawn in the same colour, fully opaque, so
touching objects and thin parts stay visible.

Outputs, all written under a temporary name and renamed:

- ``.mp4``: H.264 (libx264) in yuv420p, which needs even sizes: an odd height or width is padded
  by one replicated row or column. Frames are streamed: one frame in memory at a time.
- ``.gif``: Pillow needs every frame at once, so the GIF holds at most ``GIF_MAX_FRAMES`` evenly
  spaced frames, downscaled to ``GIF_MAX_SIDE`` on the longer side and quantised to 256 colours
  as they arrive (fast octree: median cut costs ~0.3 s a frame); each is shown as long as the
  frames it stands for, so the GIF plays at the video's pace.
- ``<stem>_sheet.png`` beside it: ``SHEET_FRAMES`` evenly spaced frames in a grid, each with its
  frame index and name.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from stm_core.errors import InputError
from stm_core.io import DAVIS_PALETTE

from .run_reader import FrameLabels, LabelRun, RunCorpus, VideoMasks

__all__ = [
    "PREVIEW_SUFFIXES",
    "PreviewSummary",
    "contact_sheet",
    "corpus_frames",
    "evenly_spaced",
    "outline",
    "overlay",
    "render_preview",
    "sheet_path",
]

logger = logging.getLogger(__name__)

PREVIEW_SUFFIXES: tuple[str, ...] = (".gif", ".mp4")
PALETTE_RGB = np.frombuffer(DAVIS_PALETTE, dtype=np.uint8).reshape(256, 3)  # 256 x 3, RGB
OVERLAY_ALPHA = 0.5
DEFAULT_FPS = 10.0
GIF_MAX_FRAMES = 120
GIF_MAX_SIDE = 480  # pixels, longer side
SHEET_FRAMES = 12
SHEET_COLUMNS = 4
SHEET_THUMB_SIDE = 320  # pixels, longer side of each cell
SHEET_GAP = 6  # pixels between cells


@dataclass(frozen=True)
class PreviewSummary:
    """What :func:`render_preview` wrote: the animation, its contact sheet and frame counts."""

    out: Path
    sheet: Path
    frames_read: int
    frames_written: int

    def __str__(self) -> str:
        return (
            f"wrote {self.out} ({self.frames_written} of {self.frames_read} frames) "
            f"and {self.sheet}"
        )


# --- drawing (pure) -------------------------------------------------------------------------


def outline(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner boundary of every object in an ``H x W`` label map: object pixels within
    ``thickness`` pixels (Chebyshev distance) of a pixel with another label. The image border
    is not a boundary. Returns ``H x W`` bool."""
    if thickness < 1:
        return np.zeros(labels.shape, dtype=bool)
    size = 2 * thickness + 1
    high = ndimage.maximum_filter(labels, size=size, mode="nearest")
    low = ndimage.minimum_filter(labels, size=size, mode="nearest")
    return (labels > 0) & ((high != labels) | (low != labels))


def outline_thickness(height: int, width: int) -> int:
    """Outline width in pixels for a frame: ~1/300 of its longer side, at least 1 (3 px for
    854 x 480), so it survives the downscaling of the GIF and the contact sheet."""
    return max(1, round(max(height, width) / 300))


def overlay(
    frame: np.ndarray,
    labels: np.ndarray,
    alpha: float = OVERLAY_ALPHA,
    thickness: int | None = None,
) -> np.ndarray:
    """``frame`` (``H x W x 3`` uint8 RGB) with the objects of ``labels`` (``H x W``, 0 =
    background) blended in their palette colours and outlined. Returns a new uint8 array."""
    if frame.shape[:2] != labels.shape:
        raise ValueError(f"frame {frame.shape[:2]} and labels {labels.shape} differ in size")
    colours = PALETTE_RGB[labels]  # H x W x 3
    out = frame.copy()
    fg = labels > 0
    blended = (1.0 - alpha) * frame[fg].astype(np.float32) + alpha * colours[fg]
    out[fg] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if thickness is None:
        thickness = outline_thickness(*labels.shape)
    edge = outline(labels, thickness)
    out[edge] = colours[edge]
    return out


def evenly_spaced(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread over ``0 .. count - 1``, first and last included, ascending and
    distinct (all of them when ``count <= wanted``)."""
    if count <= 0 or wanted <= 0:
        return []
    if count <= wanted:
        return list(range(count))
    if wanted == 1:
        return [0]
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: a fixed small bitmap font
        return ImageFont.load_default()


def _caption(image: Image.Image, text: str) -> None:
    """``text`` in white on a dark box in the top-left corner of ``image`` (in place)."""
    draw = ImageDraw.Draw(image)
    font = _font(max(10, min(image.size) // 14))
    left, top, right, bottom = draw.textbbox((4, 3), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 3), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255), font=font)


def contact_sheet(
    cells: list[tuple[np.ndarray, str]], title: str = "", columns: int = SHEET_COLUMNS
) -> Image.Image:
    """A grid of ``(image, caption)`` cells (``H x W x 3`` uint8, all one size), each scaled to
    ``SHEET_THUMB_SIDE`` and captioned, ``columns`` per row, with an optional title bar."""
    if not cells:
        raise ValueError("a contact sheet needs at least one frame")
    thumbs = []
    for pixels, text in cells:
        thumb = _fit(Image.fromarray(pixels), SHEET_THUMB_SIDE)
        _caption(thumb, text)
        thumbs.append(thumb)
    columns = max(1, min(columns, len(thumbs)))
    rows = math.ceil(len(thumbs) / columns)
    cell_w, cell_h = thumbs[0].size
    title_h = 28 if title else 0
    sheet = Image.new(
        "RGB",
        (
            columns * cell_w + (columns + 1) * SHEET_GAP,
            title_h + rows * cell_h + (rows + 1) * SHEET_GAP,
        ),
        (40, 40, 40),
    )
    if title:
        ImageDraw.Draw(sheet).text((SHEET_GAP, 5), title, fill=(255, 255, 255), font=_font(16))
    for i, thumb in enumerate(thumbs):
        row, col = divmod(i, columns)
        x = SHEET_GAP + col * (cell_w + SHEET_GAP)
        y = title_h + SHEET_GAP + row * (cell_h + SHEET_GAP)
        sheet.paste(thumb, (x, y))
    return sheet


def sheet_path(out: str | Path) -> Path:
    """``dir/clip.mp4`` -> ``dir/clip_sheet.png``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_sheet.png")


# --- frames from the corpus -----------------------------------------------------------------


def corpus_frames(run: LabelRun, video_id: str) -> tuple[Iterator[np.ndarray], int | None]:
    """The frames of ``video_id`` from the corpus the run labelled (``H x W x 3`` uint8 RGB,
    native size, streamed) and their count when the listing tells it (frame folders; None for
    video files). InputError when the corpus no longer lists the video."""
    corpus = RunCorpus.of_run(run)
    task = corpus.task(video_id)
    return corpus.frames(video_id), task.num_frames


# --- writers --------------------------------------------------------------------------------


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class _Mp4Writer:
    """H.264 / yuv420p MP4 written frame by frame with PyAV, under a temporary name."""

    def __init__(self, path: Path, height: int, width: int, fps: float) -> None:
        import av

        self.path, self.tmp = path, _temp_name(path)
        self.height, self.width = height + height % 2, width + width % 2  # yuv420p: even
        self.container: Any = av.open(str(self.tmp), mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream: Any = self.container.add_stream("libx264", rate=rate)
        self.stream.height, self.stream.width = self.height, self.width
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "20", "preset": "veryfast"}
        self.count = 0

    def wants(self, index: int) -> bool:
        return True  # every frame: the MP4 is streamed

    def add(self, index: int, rgb: np.ndarray) -> None:
        import av

        pad_h, pad_w = self.height - rgb.shape[0], self.width - rgb.shape[1]
        if pad_h or pad_w:
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.count += 1

    def finish(self) -> None:
        for packet in self.stream.encode():  # flush the encoder's delayed frames
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.container.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class _GifWriter:
    """Collects the chosen frames (downscaled) and writes them as one looping GIF."""

    def __init__(self, path: Path, num_frames: int, fps: float) -> None:
        self.path = path
        self.keep = set(evenly_spaced(num_frames, GIF_MAX_FRAMES))
        step = max(1.0, num_frames / max(1, len(self.keep)))
        self.duration_ms = max(20, round(1000.0 * step / fps))  # GIF delays are in 10 ms units
        self.frames: list[Image.Image] = []
        self.count = 0

    def wants(self, index: int) -> bool:
        return index in self.keep

    def add(self, index: int, rgb: np.ndarray) -> None:
        if index in self.keep:  # own 256-colour palette per frame; octree: ~50x median cut
            small = _fit(Image.fromarray(rgb), GIF_MAX_SIDE)
            self.frames.append(small.quantize(256, method=Image.Quantize.FASTOCTREE))
            self.count += 1

    def finish(self) -> None:
        if not self.frames:
            raise InputError(self.path, "no frames to write")
        tmp = _temp_name(self.path)
        try:
            self.frames[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=self.frames[1:],
                duration=self.duration_ms,
                loop=0,
            )
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        self.frames.clear()


# --- the preview ----------------------------------------------------------------------------


def _check_out(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in PREVIEW_SUFFIXES:
        raise InputError(
            out, f"preview file must end in {' or '.join(PREVIEW_SUFFIXES)}, not {suffix!r}"
        )
    return suffix


def _frame_caption(index: int, name: str | None) -> str:
    """``frame 12``, plus the stored name when it is not just the index (``frame 1  00005``
    for YouTube-VOS), or ``no masks`` for a frame the run has no rows for."""
    if name is None:
        return f"frame {index}  no masks"
    return f"frame {index}" + ("" if name.isdigit() and int(name) == index else f"  {name}")


def _labels_by_frame(video: VideoMasks) -> Iterator[FrameLabels | None]:
    """For frame 0, 1, 2, ...: its label map, or None when it has no rows; endless."""
    pending = video.iter_frames()
    nxt = next(pending, None)
    index = 0
    while True:
        while nxt is not None and nxt.frame_index < index:
            nxt = next(pending, None)
        yield nxt if nxt is not None and nxt.frame_index == index else None
        index += 1


def render_preview(
    run: LabelRun,
    video_id: str,
    out: str | Path,
    *,
    fps: float = DEFAULT_FPS,
    frames: Iterator[np.ndarray] | None = None,
) -> PreviewSummary:
    """Write ``out`` (``.gif`` or ``.mp4``) and its contact sheet for one video of ``run``.

    ``frames`` replaces the corpus as the frame source (tests, or a corpus that moved); by
    default the frames come from :func:`corpus_frames`. Frames without masks are shown as they
    are; frames of another size than the masks raise InputError.
    """
    out = Path(out)
    suffix = _check_out(out)
    if fps <= 0:
        raise InputError(None, f"fps must be positive, got {fps}")
    video = run.video(video_id)  # unknown ids fail before the corpus is listed
    listed: int | None = None
    if frames is None:
        frames, listed = corpus_frames(run, video_id)
    # masks cover every frame of a finished video; a folder's listing counts any frame beyond
    num_frames = max(max(video.frame_indices) + 1, listed or 0)
    names = dict(zip(video.frame_indices, video.frame_names, strict=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer: _Mp4Writer | _GifWriter
    if suffix == ".mp4":
        writer = _Mp4Writer(out, video.height, video.width, fps)
    else:
        writer = _GifWriter(out, num_frames, fps)
    sheet_frames = set(evenly_spaced(num_frames, SHEET_FRAMES))
    cells: list[tuple[np.ndarray, str]] = []
    read = 0
    try:
        for index, (frame, labels) in enumerate(zip(frames, _labels_by_frame(video), strict=False)):
            read += 1
            if frame.shape[:2] != (video.height, video.width):
                raise InputError(
                    f"video {video_id!r} frame {index}",
                    f"frame is {frame.shape[1]}x{frame.shape[0]} but the run's masks are "
                    f"{video.width}x{video.height} (width x height): the corpus changed",
                )
            if not (writer.wants(index) or index in sheet_frames):
                continue
            shown = frame if labels is None else overlay(frame, labels.labels)
            writer.add(index, shown)
            if index in sheet_frames:  # keep a thumbnail only: 12 full frames may be large
                thumb = np.asarray(_fit(Image.fromarray(shown), SHEET_THUMB_SIDE))
                cells.append((thumb, _frame_caption(index, names.get(index))))
        if read == 0:
            raise InputError(f"video {video_id!r}", "the corpus gave no frames")
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    if read < num_frames:
        logger.warning(
            "video %s: the corpus gave %d of %d expected frames", video_id, read, num_frames
        )
    title = f"run {run.run_id}  video {video_id}  {num_frames} frames"
    sheet = sheet_path(out)
    tmp = _temp_name(sheet)
    try:
        contact_sheet(cells, title).save(tmp, format="PNG")
        os.replace(tmp, sheet)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("preview of %s: %s and %s", video_id, out, sheet)
    return PreviewSummary(out, sheet, read, writer.count)
