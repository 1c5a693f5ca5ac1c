"""Score a model on a dataset folder the way the DAVIS semi-supervised protocol does.

Every object is seeded on the first annotated frame where it appears (only that object: a later
mask is never passed as a correction), the whole video is propagated, and J&F is computed on the
annotated frames (first and last skipped, see :mod:`stm_core.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .adaptation import Adaptation, adapt_to_seeds
from .io import VideoFolder, frame_size, iter_frames, list_videos, read_frames_at, read_seeds
from .metrics import SequenceScores, evaluate_sequence, summarize
from .model.network import STM
from .propagation import propagate


def first_appearance_seeds(annotations: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Frame index -> label map holding only the objects that first appear on that frame."""
    seeds: dict[int, np.ndarray] = {}
    seen: set[int] = set()
    for t in sorted(annotations):
        labels = annotations[t]
        new = [int(o) for o in np.unique(labels) if o and int(o) not in seen]
        if new:
            seeds[t] = np.where(np.isin(labels, new), labels, 0).astype(np.uint8)
            seen.update(new)
    return seeds


def evaluate_video(
    model: STM,
    video: VideoFolder,
    mem_every: int = 5,
    max_memory_frames: int | None = None,
    resize_mismatched: bool = False,
    adaptation: Adaptation | None = None,
) -> SequenceScores:
    """Propagate ``video`` from its first-appearance seeds and score its annotated frames.

    With ``adaptation``, a copy of the model is first fine-tuned on the seed frames (only the
    seeds: the masks being scored never reach it)."""
    size = frame_size(video)
    annotations = read_seeds(video, size, resize_mismatched=resize_mismatched)
    seeds = first_appearance_seeds(annotations)
    if adaptation is not None and adaptation.enabled:
        seed_frames = read_frames_at(video, seeds, size)
        model = adapt_to_seeds(model, seed_frames, seeds, adaptation)
    annotated = sorted(annotations)
    predictions: dict[int, np.ndarray] = {}
    frames = iter_frames(video, size)
    for out in propagate(model, frames, seeds, mem_every, max_memory_frames):
        if out.frame_index in annotations:
            predictions[out.frame_index] = out.labels
    return evaluate_sequence(
        [predictions[t] for t in annotated],
        [annotations[t] for t in annotated],
        name=video.name,
    )


def evaluate_root(
    model: STM,
    root: str | Path,
    mem_every: int = 5,
    max_memory_frames: int | None = None,
    adaptation: Adaptation | None = None,
) -> dict[str, Any]:
    """J&F of every scorable video under a DAVIS / YouTube-VOS ``root`` (``summarize``'s
    result), plus ``unscored``: the videos with fewer than 3 annotated frames (the first and
    last are never scored) and why."""
    scores, unscored = {}, {}
    for video in list_videos(root):
        if len(video.mask_paths) < 3:
            unscored[video.name] = f"{len(video.mask_paths)} annotated frame(s), 3 needed"
            continue
        scores[video.name] = evaluate_video(
            model, video, mem_every, max_memory_frames, True, adaptation
        )
    if not scores:
        from .errors import InputError

        raise InputError(root, "no video with at least 3 annotated frames to score")
    return summarize(scores) | {"unscored": unscored}
