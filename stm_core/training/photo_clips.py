"""Training clips from real photos with object masks (ECSSD, DUTS-TR): STM's first stage on
real images, and several objects per clip by pasting objects cut out of other photos.

Why: the paper's static-image pretraining is what teaches the network real objects before it
sees video (its ablation: 60.0 with it alone, 38.1 video training without it). Salient-object
photos hold one object each, which teaches nothing about telling objects apart, so most clips
get one or two objects from other photos pasted over them, each its own id; half of the clips
then move every object on its own (``lucid_clip``), so objects cross and cover each other.

A photo folder holds ``images/<stem>.jpg`` (or .png) and ``masks/<stem>.png`` (any non-zero
pixel is the object). Pairs are listed once; a file is read only when a clip draws it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import read_frame, read_mask
from .lucid_clips import lucid_clip
from .static_clips import static_clip

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class PhotoPair:
    image: Path
    mask: Path

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(image H x W x 3 uint8, mask H x W uint8 in {0, 1}); InputError names a bad file."""
        image = read_frame(self.image)
        mask = read_mask(self.mask)
        if mask.shape != image.shape[:2]:
            raise InputError(
                self.mask, f"mask is {mask.shape}, its photo {self.image.name} {image.shape[:2]}"
            )
        binary = (mask > 0).astype(np.uint8)
        if not binary.any():
            raise InputError(self.mask, "mask is empty (no object pixel)")
        return image, binary


class PhotoSource:
    """The photo/mask pairs of one folder (``images/`` and ``masks/``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        images, masks = self.root / "images", self.root / "masks"
        if not images.is_dir() or not masks.is_dir():
            raise InputError(self.root, "needs images/ and masks/ folders (ECSSD / DUTS layout)")
        mask_by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png"}
        self.pairs: list[PhotoPair] = []
        unpaired = 0
        for path in sorted(images.iterdir()):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            mask = mask_by_stem.get(path.stem)
            if mask is None:
                unpaired += 1
                continue
            self.pairs.append(PhotoPair(path, mask))
        if unpaired:
            logger.warning("%s: %d photos without a mask, skipped", self.root, unpaired)
        if not self.pairs:
            raise InputError(self.root, "holds no photo with a mask of the same name")

    def __len__(self) -> int:
        return len(self.pairs)


def _paste(
    image: np.ndarray,
    labels: np.ndarray,
    cutout: np.ndarray,
    mask: np.ndarray,
    obj_id: int,
    rng: np.random.Generator,
) -> None:
    """Paste the object of (``cutout``, ``mask``) onto ``image`` in place, scaled so its box is
    25-60 % of the image's shorter side, at a random place; it covers what was there."""
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    side = min(image.shape[:2]) * rng.uniform(0.25, 0.6)
    scale = side / max(box_w, box_h)
    new_w, new_h = max(2, int(box_w * scale)), max(2, int(box_h * scale))
    patch = np.asarray(
        Image.fromarray(cutout).resize((new_w, new_h), Image.Resampling.BILINEAR, box=box)
    )
    alpha = np.asarray(
        Image.fromarray(mask * 255).resize((new_w, new_h), Image.Resampling.BILINEAR, box=box)
    )
    height, width = labels.shape
    # Up to a third of the object may hang over an edge: objects at the border are real too.
    x0 = int(rng.integers(-new_w // 3, max(width - 2 * new_w // 3, -new_w // 3 + 1)))
    y0 = int(rng.integers(-new_h // 3, max(height - 2 * new_h // 3, -new_h // 3 + 1)))
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + new_w, width), min(y0 + new_h, height)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    a = alpha[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0, None].astype(np.float32) / 255.0
    p = patch[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0].astype(np.float32)
    region = image[fy0:fy1, fx0:fx1].astype(np.float32)
    image[fy0:fy1, fx0:fx1] = np.clip(p * a + region * (1 - a), 0, 255).astype(np.uint8)
    labels[fy0:fy1, fx0:fx1][a[..., 0] >= 0.5] = obj_id


def photo_composite(
    pairs: list[PhotoPair], rng: np.random.Generator, max_objects: int, paste_prob: float = 0.7
) -> tuple[np.ndarray, np.ndarray]:
    """A photo with its object as id 1 and, with ``paste_prob``, 1..``max_objects - 1`` objects
    of other photos pasted over it as ids 2, 3, ... Objects that end up fully covered are simply
    absent (the clip samplers drop objects too small to learn from)."""
    base = pairs[int(rng.integers(len(pairs)))]
    image, labels = base.read()
    image = image.copy()
    if max_objects > 1 and rng.random() < paste_prob:
        extra = int(rng.integers(1, max_objects))
        for obj_id in range(2, 2 + extra):
            cutout, mask = pairs[int(rng.integers(len(pairs)))].read()
            _paste(image, labels, cutout, mask, obj_id, rng)
    return image, labels


def photo_clip(
    pairs: list[PhotoPair],
    rng: np.random.Generator,
    num_frames: int,
    crop: tuple[int, int],
    max_objects: int,
    lucid_prob: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A training clip from real photos: a :func:`photo_composite` warped per frame as a whole
    (``static_clip``) or, with ``lucid_prob``, with each object moving on its own
    (``lucid_clip``). Returns (frames T x H x W x 3 uint8, masks T x H x W uint8 ids 1..k)."""
    image, labels = photo_composite(pairs, rng, max_objects)
    if rng.random() < lucid_prob:
        return lucid_clip(image, labels, rng, num_frames, crop, max_objects)
    return static_clip(image, labels, rng, num_frames, crop, max_objects)
