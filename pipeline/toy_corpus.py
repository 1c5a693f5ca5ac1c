"""Toy videos whose right answer is known: coloured boxes drifting over a smooth noisy background.

The labeling job's tests and its benchmark both need small videos with exact masks, as frame
folders and as mp4 files, and their seed rows; they share these generators so the benchmark times
the very inputs the tests check. (The model's held-out synthetic set is
:mod:`stm_core.training.heldout`: realistic textures, for quality; these are for plumbing and
speed, where what the frames look like does not matter.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from pycocotools import mask as coco_mask

from schemas.tables import SeedRow

__all__ = ["FPS", "SyntheticVideo", "encode_mp4", "rle", "seed_rows", "synthetic_video"]

Size = tuple[int, int]  # (height, width) in pixels
FPS = 10


@dataclass(frozen=True)
class SyntheticVideo:
    """``frames``: T arrays of H x W x 3 uint8 RGB; ``labels``: the T true label maps (H x W
    uint8, 0 = background, k = object k) the seeds are cut from."""

    frames: list[np.ndarray]
    labels: list[np.ndarray]

    @property
    def size(self) -> Size:
        return self.labels[0].shape[0], self.labels[0].shape[1]


def synthetic_video(
    seed: int,
    num_frames: int = 6,
    size: Size = (48, 64),
    objects: int = 2,
    enters: dict[int, int] | None = None,
) -> SyntheticVideo:
    """Object k (1..``objects``) is a rectangle of its own colour that moves a few pixels per
    frame; ``enters`` maps an object id to the first frame it is visible on (default: frame 0),
    so a video can have an object that appears later (and whose rows before that have area 0).
    The same arguments give the same video."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [40 + 60 * yy / height, 50 + 50 * xx / width, 90 + 0 * xx], axis=-1
    ) + rng.normal(0, 6, (height, width, 3))
    enters = enters or {}
    boxes = []
    for _ in range(objects):
        h, w = (
            int(rng.integers(height // 5, height // 3)),
            int(rng.integers(width // 6, width // 3)),
        )
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        dy, dx = (int(v) for v in rng.integers(-2, 3, 2))
        colour = rng.integers(120, 255, 3)
        boxes.append((y, x, h, w, dy, dx, colour))
    frames, labels = [], []
    for t in range(num_frames):
        image = base.copy()
        label = np.zeros(size, np.uint8)
        for k, (y, x, h, w, dy, dx, colour) in enumerate(boxes, start=1):
            if t < enters.get(k, 0):
                continue
            top = int(np.clip(y + dy * t, 0, height - h))
            left = int(np.clip(x + dx * t, 0, width - w))
            image[top : top + h, left : left + w] = colour
            label[top : top + h, left : left + w] = k
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
        labels.append(label)
    return SyntheticVideo(frames, labels)


def encode_mp4(path: Path, frames: Sequence[np.ndarray], faststart: bool = False) -> Path:
    """``frames`` as a libx264 yuv420p mp4 at ``path`` (H and W must be even). ``faststart``
    puts the index (moov) first, so a truncated copy still decodes its first frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rle(mask: np.ndarray) -> bytes:
    """COCO compressed RLE counts of a 2-D mask (pycocotools, independent of pipeline.rle, so a
    test of pipeline.rle's output is checked against a second implementation)."""
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


def seed_rows(video_id: str, frame_index: int, labels: np.ndarray) -> list[SeedRow]:
    """One seed row per object present in the label map ``labels`` (H x W uint8)."""
    height, width = labels.shape
    return [
        SeedRow(video_id, frame_index, int(k), height, width, rle(labels == k))
        for k in np.unique(labels)
        if k
    ]
