"""Stage 2 of STM training (paper, Sec. 4): short clips sampled from real or synthetic videos.

Why: the paper trains on 3 frames taken in temporal order from a video, skipping a random number
of frames between them; the largest allowed skip grows from 0 to 25 during training (a
curriculum: small motion first, then long-range matching). ``sample_video_clip`` does this for
any video given as two index-able sequences (numpy arrays, lists, or the lazy ones below), so
only the sampled frames are ever decoded or rendered.

Skip convention: a skip of ``s`` between two sampled frames means ``s`` frames are left out, so
their indices differ by ``s + 1``; ``max_skip = 0`` gives consecutive frames. For a source whose
frames are only its annotated ones (``FolderVideoSource``), skips count annotated frames.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..errors import InputError
from .static_clips import crop_origin, keep_objects
from .synthetic_video import VideoPlan, render_frame

logger = logging.getLogger(__name__)


class FrameSequence(Protocol):
    """Anything with ``len`` and integer indexing that returns an image array."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def max_skip_schedule(
    step: int, total_steps: int, start: int = 0, end: int = 25, ramp_fraction: float = 1.0
) -> int:
    """The curriculum's largest skip at ``step``: linear from ``start`` (step 0) to ``end``
    (reached at ``ramp_fraction * total_steps`` and kept after), rounded down.

    The paper grows it from 0 to 25; ``ramp_fraction < 1`` spends the last part of training at
    the full skip.
    """
    if total_steps <= 0:
        raise InputError("total_steps", f"must be > 0, got {total_steps}")
    if not 0.0 < ramp_fraction <= 1.0:
        raise InputError("ramp_fraction", f"must be in (0, 1], got {ramp_fraction}")
    if start < 0 or end < 0:
        raise InputError("max_skip_schedule", f"start and end must be >= 0, got {start}, {end}")
    progress = min(max(step, 0) / (ramp_fraction * total_steps), 1.0)
    return int(math.floor(start + (end - start) * progress + 1e-9))


def sample_frame_indices(
    num_available: int, rng: np.random.Generator, num_frames: int = 3, max_skip: int = 0
) -> list[int]:
    """``num_frames`` indices into a video of ``num_available`` frames, increasing, each gap
    ``1 + skip`` with skip uniform in 0..max_skip (shrunk so the clip fits in the video).

    A video shorter than ``num_frames`` repeats its last frame (gaps of 0) rather than failing,
    so very short annotated sequences can still be used.
    """
    if num_available < 1:
        raise InputError("video", "has no frames")
    if num_frames < 1 or max_skip < 0:
        raise InputError("sample_frame_indices", "num_frames must be >= 1 and max_skip >= 0")
    if num_available < num_frames:
        return [min(i, num_available - 1) for i in range(num_frames)]
    gaps_room = num_available - 1  # the largest total span that fits
    largest_gap = min(max_skip + 1, gaps_room // max(num_frames - 1, 1)) if num_frames > 1 else 1
    largest_gap = max(largest_gap, 1)
    gaps = rng.integers(1, largest_gap + 1, num_frames - 1)
    span = int(gaps.sum())
    first = int(rng.integers(0, num_available - span))
    return [first, *(first + np.cumsum(gaps)).tolist()]


def sample_video_clip(
    video_frames: Sequence[np.ndarray] | FrameSequence,
    video_masks: Sequence[np.ndarray] | FrameSequence,
    rng: np.random.Generator,
    num_frames: int = 3,
    max_skip: int = 0,
    crop: tuple[int, int] = (384, 384),
    max_objects: int = 3,
    scale_range: tuple[float, float] | None = None,
    flip_prob: float = 0.5,
    min_pixels: int | None = None,
    max_tries: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """A training clip from one video (paper's stage 2).

    ``video_frames[i]`` is H x W x 3 uint8 and ``video_masks[i]`` H x W integer ids. Frames are
    sampled by ``sample_frame_indices``; each is scaled by ``s`` (uniform in ``scale_range`` when
    given, else 1, and never less than needed to cover the crop), mirrored with ``flip_prob``,
    and cropped to ``crop`` = (H, W) around a random object of the first sampled frame (its whole
    box when it fits, else one of its pixels). Objects with fewer than ``min_pixels`` (default
    0.2 % of the crop, at least 16) pixels in the first cropped frame are dropped; 1..
    ``max_objects`` of the rest are kept and renumbered 1..k.

    Returns (frames T x H x W x 3 uint8, masks T x H x W uint8). Raises InputError when the frames
    and masks disagree in count or size, or no attempt in ``max_tries`` finds an object.
    """
    if len(video_frames) != len(video_masks):
        raise InputError(
            "video", f"{len(video_frames)} frames but {len(video_masks)} masks: they must pair up"
        )
    crop_h, crop_w = crop
    if min_pixels is None:
        min_pixels = max(16, int(0.002 * crop_h * crop_w))
    for _ in range(max_tries):
        indices = sample_frame_indices(len(video_frames), rng, num_frames, max_skip)
        first_mask = np.asarray(video_masks[indices[0]])
        ids = np.unique(first_mask)
        ids = ids[ids > 0]
        if len(ids) == 0:
            continue
        src_h, src_w = first_mask.shape
        scale = 1.0 if scale_range is None else rng.uniform(*scale_range)
        scale = max(scale, crop_h / src_h, crop_w / src_w)
        flip = rng.random() < flip_prob
        anchor = ids[int(rng.integers(len(ids)))]
        ys, xs = np.nonzero(first_mask == anchor)
        if flip:
            xs = src_w - 1 - xs
        x0 = crop_origin(xs.min() * scale, (xs.max() + 1) * scale, int(src_w * scale), crop_w, rng)
        y0 = crop_origin(ys.min() * scale, (ys.max() + 1) * scale, int(src_h * scale), crop_h, rng)
        # The source box, kept inside the frame (rounding can push it out by a hair).
        box_w, box_h = min(crop_w / scale, src_w), min(crop_h / scale, src_h)
        box_x = min(max(x0 / scale, 0.0), src_w - box_w)
        box_y = min(max(y0 / scale, 0.0), src_h - box_h)
        box = (box_x, box_y, box_x + box_w, box_y + box_h)
        frames = np.empty((num_frames, crop_h, crop_w, 3), np.uint8)
        labels = np.empty((num_frames, crop_h, crop_w), np.uint8)
        for t, index in enumerate(indices):
            frame = np.asarray(video_frames[index])
            mask = first_mask if t == 0 else np.asarray(video_masks[index])
            if frame.shape[:2] != (src_h, src_w) or mask.shape != (src_h, src_w):
                raise InputError(
                    f"frame {index}",
                    f"frame {frame.shape[:2]} and mask {mask.shape} differ from the first "
                    f"sampled frame's {(src_h, src_w)}",
                )
            if mask.dtype != np.uint8 and mask.size and int(mask.max()) > 255:
                raise InputError(f"mask {index}", "object ids must be in 0..255")
            if flip:
                frame, mask = frame[:, ::-1], mask[:, ::-1]
            if scale == 1.0:  # a plain crop: no resampling needed
                frames[t] = frame[y0 : y0 + crop_h, x0 : x0 + crop_w]
                labels[t] = mask[y0 : y0 + crop_h, x0 : x0 + crop_w]
                continue
            picture = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
            label_image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L")
            frames[t] = np.asarray(
                picture.resize((crop_w, crop_h), Image.Resampling.BILINEAR, box=box)
            )
            labels[t] = np.asarray(
                label_image.resize((crop_w, crop_h), Image.Resampling.NEAREST, box=box)
            )
        kept = keep_objects(labels, rng, max_objects, min_pixels)
        if kept is not None:
            return frames, kept
    raise InputError("video", f"no object visible in a first frame after {max_tries} tries")


# --------------------------------------------------------------------------- lazy sources


class RenderedVideo:
    """A synthetic ``VideoPlan`` as two lazy sequences (``frames``, ``masks``): a frame is
    rendered on first access and kept, so sampling 3 frames of a 40-frame plan renders 3."""

    def __init__(self, plan: VideoPlan) -> None:
        self.plan = plan
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.frames = LazyColumn(self, 0)
        self.masks = LazyColumn(self, 1)

    def __len__(self) -> int:
        return self.plan.num_frames

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.plan.num_frames:
            raise IndexError(index)
        if index not in self._cache:
            frame, mask = render_frame(self.plan, index)[:2]
            self._cache[index] = (frame, mask)
        return self._cache[index]


class PairSource(Protocol):
    """A video whose ``get(i)`` returns (frame i, mask i), e.g. ``RenderedVideo``."""

    def __len__(self) -> int: ...

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class LazyColumn:
    """The frames (``which=0``) or the masks (``which=1``) of a :class:`PairSource` as a
    sequence, so a clip sampler indexes them without the video being read whole."""

    def __init__(self, owner: PairSource, which: int) -> None:
        self._owner = owner
        self._which = which

    def __len__(self) -> int:
        return len(self._owner)

    def __getitem__(self, index: int) -> np.ndarray:
        return self._owner.get(index)[self._which]


@dataclass
class FolderVideo:
    """The annotated frames of one on-disk video as lazy
    ``frames`` / ``masks`` sequences; a mask whose size differs from its frame is resized
    (nearest) to the frame, since real data has such off-by-one masks."""

    name: str
    frame_paths: tuple[Path, ...]
    mask_paths: tuple[Path, ...]
    frames: LazyColumn = field(init=False, repr=False)
    masks: LazyColumn = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.frames = LazyColumn(self, 0)
        self.masks = LazyColumn(self, 1)

    def __len__(self) -> int:
        return len(self.frame_paths)

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from ..io import read_frame, read_mask

        frame = read_frame(self.frame_paths[index])
        mask = read_mask(self.mask_paths[index])
        if mask.shape != frame.shape[:2]:
            logger.debug("%s: resizing mask to its frame's size", self.mask_paths[index])
            mask = np.asarray(
                Image.fromarray(mask).resize(
                    (frame.shape[1], frame.shape[0]), Image.Resampling.NEAREST
                )
            )
        return frame, mask


class FolderVideoSource:
    """Videos of a dataset folder (DAVIS / YouTube-VOS) as training videos (an extra source).

    Only annotated frames are used (the others have no masks to train on); videos with fewer
    than ``min_frames`` annotated frames are skipped. Frames are read from disk when sampled.
    Finding the videos is the input side's job (``pipeline.training.folders`` builds this from a
    root with ``pipeline.corpus``); ``source`` names the folder in errors.
    """

    def __init__(
        self, videos: Sequence[FolderVideo], source: str | Path = "", min_frames: int = 1
    ) -> None:
        self.root = Path(source)
        self.videos: list[FolderVideo] = []
        for video in videos:
            if len(video) < min_frames:
                logger.info("%s: %d annotated frames, skipped", video.name, len(video))
                continue
            self.videos.append(video)
        if not self.videos:
            raise InputError(source, f"no video with at least {min_frames} annotated frames")

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> FolderVideo:
        return self.videos[index]
