"""Held-out synthetic evaluation videos, written in DAVIS layout.

Why: training must never see the evaluation data, and the real clips in ``shared/data/real`` are
for evaluation only. These videos come from the held-out photos (``textures.HELDOUT_IMAGES``) and
the held-out seed stream (``split="heldout"``), so no training sample shares a photo or a random
stream with them; saved as a DAVIS folder they go through the same evaluation code as real data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import write_mask
from .synthetic_video import SyntheticVideo, make_video, split_rng
from .textures import Split

logger = logging.getLogger(__name__)

_COUNT_PURPOSE = 3


def heldout_videos(
    n: int,
    num_frames: int = 30,
    size: tuple[int, int] = (240, 432),
    seed_base: int = 0,
    num_objects: int | None = None,
    visible_throughout: bool = False,
) -> list[SyntheticVideo]:
    """``n`` held-out videos from seeds ``seed_base, seed_base + 1, ...``.

    Each has ``num_objects`` objects, or 1..3 drawn from its seed when None. Evaluation seeds
    every object on frame 0 (DAVIS style), so a seed whose frame 0 hides an object completely
    (behind another object or a distractor) is skipped and the next seed is tried; the names
    (``synth-heldout-<seed>``) say which seeds were used. ``visible_throughout`` also skips
    seeds where an object is hidden or out of view on any frame: a small set where a model
    scores well by predicting nothing once objects leave says little about it.
    """
    return evaluation_videos(
        n, num_frames, size, seed_base, num_objects, "heldout", visible_throughout
    )


def evaluation_videos(
    n: int,
    num_frames: int = 30,
    size: tuple[int, int] = (240, 432),
    seed_base: int = 0,
    num_objects: int | None = None,
    split: Split = "heldout",
    visible_throughout: bool = False,
) -> list[SyntheticVideo]:
    """Like ``heldout_videos`` for either split. ``split="train"`` gives videos of the training
    photos (training draws its video seeds from 0..2**31, so these exact videos are almost surely
    unseen): the gap between the two splits' scores measures how much a model depends on the
    photos it was trained on."""
    if n < 1:
        raise InputError("n", f"must be >= 1, got {n}")
    videos: list[SyntheticVideo] = []
    seed = seed_base
    while len(videos) < n:
        count = num_objects
        if count is None:
            count = int(split_rng(seed, split, _COUNT_PURPOSE).integers(1, 4))
        video = make_video(seed, num_frames, size, count, split)
        wanted = set(range(1, count + 1))
        shown = video.masks if visible_throughout else video.masks[:1]
        if all(wanted <= set(np.unique(mask).tolist()) for mask in shown):
            videos.append(video)
        else:
            logger.debug("%s seed %d hides an object, skipped", split, seed)
        seed += 1
        if seed - seed_base > 20 * n + 100:
            raise InputError("evaluation_videos", "too many seeds hide an object")
    return videos


def save_as_davis(
    videos: Sequence[SyntheticVideo],
    root: str | Path,
    resolution: str = "480p",
    jpeg_quality: int = 90,
) -> Path:
    """Write ``root/JPEGImages/<resolution>/<name>/00000.jpg`` frames and
    ``root/Annotations/<resolution>/<name>/00000.png`` palette masks for every frame.

    Returns ``root``. Refuses to overwrite an existing sequence folder.
    """
    root = Path(root)
    for video in videos:
        frames_dir = root / "JPEGImages" / resolution / video.name
        masks_dir = root / "Annotations" / resolution / video.name
        if frames_dir.exists() or masks_dir.exists():
            raise InputError(frames_dir, "already exists; pick an empty root")
        frames_dir.mkdir(parents=True)
        for t, (frame, mask) in enumerate(zip(video.frames, video.masks, strict=True)):
            Image.fromarray(frame).save(frames_dir / f"{t:05d}.jpg", quality=jpeg_quality)
            write_mask(masks_dir / f"{t:05d}.png", mask)
        logger.info("wrote %s (%d frames)", frames_dir, len(video.frames))
    return root
