"""Synthetic videos with another look than the training data, to test domain adaptation.

Why: the data engine's promise is that a nightly fine-tune on a team's own footage makes the
model better on that footage. To measure that without real data we need videos whose appearance
the shipped model never saw. ``night_vision`` turns the held-out synthetic videos into dark,
grainy, green monochrome footage (an image-intensifier look): same motion and masks, another
look. Deterministic from the video's seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from .heldout import heldout_videos
from .synthetic_video import SyntheticVideo

Look = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def night_vision(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB frame as dark, low-contrast green monochrome with sensor grain."""
    luma = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    level = 0.12 + 0.45 * np.power(luma, 0.7)
    grain = rng.normal(0.0, 0.05, level.shape).astype(np.float32)
    level = np.clip(level + grain, 0.0, 1.0)
    tint = np.array([0.25, 1.0, 0.4], np.float32)
    return np.clip(level[..., None] * tint * 255.0 + 0.5, 0, 255).astype(np.uint8)


LOOKS: dict[str, Look] = {"night": night_vision}


def shifted_videos(
    n: int,
    num_frames: int,
    size: tuple[int, int],
    seed_base: int,
    look: str = "night",
    num_objects: int | None = None,
    visible_throughout: bool = False,
) -> list[SyntheticVideo]:
    """``n`` held-out synthetic videos (see ``heldout_videos``) rendered with ``look``; names
    are ``<look>-<seed>``. Use disjoint ``seed_base`` ranges for a corpus and its ground truth;
    ``visible_throughout`` as in ``heldout_videos``."""
    if look not in LOOKS:
        raise InputError("look", f"unknown look {look!r}; known: {sorted(LOOKS)}")
    out = []
    for video in heldout_videos(n, num_frames, size, seed_base, num_objects, visible_throughout):
        seed = int(video.name.rsplit("-", 1)[-1])
        rng = np.random.default_rng([seed, 7])
        frames = np.stack([LOOKS[look](f, rng) for f in video.frames])
        out.append(
            SyntheticVideo(
                name=f"{look}-{seed:06d}",
                frames=frames,
                masks=video.masks,
                num_objects=video.num_objects,
            )
        )
    return out
