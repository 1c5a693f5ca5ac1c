"""Score a model on one video the way the DAVIS semi-supervised protocol does.

Every object is seeded on the first annotated frame where it appears (only that object: a later
mask is never passed as a correction), the whole video is propagated, and J&F is computed on the
annotated frames (first and last skipped, see :mod:`stm_core.metrics`). An object seeded on a
later frame is scored only after it (:func:`scored_frames`), as YouTube-VOS scores objects that
enter late: DAVIS never needs this rule because every object is in its first frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from .adaptation import Adaptation, adapt_to_seeds
from .codec import resize_labels
from .errors import InputError
from .metrics import SequenceScores, evaluate_sequence
from .model.network import STM
from .propagation import Precision, propagate


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


class NothingToScoreError(InputError):
    """A video whose masks hold no ground truth to score: every mask after the first seeds a
    new object (checked before anything is propagated)."""


NOTHING_TO_SCORE = (
    "no object has an annotated frame after its seed (besides the last): "
    "its later masks only seed new objects"
)


def scored_frames(annotations: Sequence[np.ndarray]) -> dict[int, list[int]]:
    """Object id -> the positions in ``annotations`` (a video's annotated frames, in order) on
    which it is scored; objects with no such frame are left out.

    An object is scored on the annotated frames after the one it is seeded on (its first
    appearance), never on the last (the toolkit's rule). Why: frames before its seed credit
    it J = F = 1 for being absent, and its seed frame credits it the seed itself, so a
    late object would score 1 on frames that say nothing of tracking (xmem2-caps' second cap
    scored 2/3 with J = 0 on the one frame that tests it). A later frame holding only objects
    that first appear on it is a seed, not ground truth for the objects before it (YouTube-VOS
    validation masks, cutie-judo's demo masks): those objects are not scored there. A full
    annotation on which every earlier object has left looks the same and is skipped too, which
    loses a few J = 1 frames and never credits a wrong one.
    """
    seen: set[int] = set()
    first_position: dict[int, int] = {}
    seed_only: list[bool] = []
    for position, labels in enumerate(annotations):
        ids = {int(k) for k in np.unique(labels)} - {0}
        new = ids - seen
        seed_only.append(bool(seen) and bool(ids) and ids == new)
        for k in new:
            first_position[k] = position
        seen |= ids
    last = len(annotations) - 1
    plan = {
        k: [i for i in range(start + 1, last) if not seed_only[i]]
        for k, start in sorted(first_position.items())
    }
    return {k: positions for k, positions in plan.items() if positions}


def evaluate_video(
    model: STM,
    frames: Iterable[np.ndarray],
    annotations: Mapping[int, np.ndarray],
    name: str,
    mem_every: int = 5,
    max_memory_frames: int | None = None,
    adaptation: Adaptation | None = None,
    frames_at: Callable[[Iterable[int]], Mapping[int, np.ndarray]] | None = None,
    precision: Precision = "fp32",
    working_size: tuple[int, int] | None = None,
) -> SequenceScores:
    """Propagate a video from the first-appearance seeds of its ``annotations`` (frame index ->
    label map) and score its annotated frames.

    ``working_size`` ``(height, width)``: ``frames`` (and ``frames_at``'s) are at this size,
    not the annotations'; the seeds are brought to it (nearest) and every prediction back to
    the annotations' size (:meth:`FrameResult.labels_at`), so the score is the one a corpus
    job that propagates downscaled frames and stores native-size masks would get.

    ``frames`` streams the video (it is not consumed when the annotations hold nothing to
    score: :class:`NothingToScoreError` is raised first). With ``adaptation``, a copy of the
    model is first fine-tuned on the seed frames, which ``frames_at`` reads (only the seeds:
    the masks being scored never reach it). ``precision``: see :mod:`stm_core.propagation`."""
    annotated = sorted(annotations)
    plan = scored_frames([annotations[t] for t in annotated])
    if len(annotated) >= 3 and not plan:
        raise NothingToScoreError(name, NOTHING_TO_SCORE)
    seeds = first_appearance_seeds(annotations)
    if working_size is not None:
        seeds = {t: _at_size(mask, tuple(working_size)) for t, mask in seeds.items()}
    if adaptation is not None and adaptation.enabled:
        if frames_at is None:
            raise ValueError("fine-tuning needs frames_at to read the seed frames")
        model = adapt_to_seeds(model, dict(frames_at(sorted(seeds))), seeds, adaptation)
    predictions: dict[int, np.ndarray] = {}
    for out in propagate(model, frames, seeds, mem_every, max_memory_frames, precision=precision):
        if out.frame_index in annotations:
            predictions[out.frame_index] = out.labels_at(annotations[out.frame_index].shape)
    missing = [t for t in annotated if t not in predictions]
    if missing:
        raise InputError(name, f"annotated frames {missing[:5]} are past the video's last frame")
    return evaluate_sequence(
        [predictions[t] for t in annotated],
        [annotations[t] for t in annotated],
        name=name,
        scored_frames=plan or None,
    )


def _at_size(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return labels if labels.shape == size else resize_labels(labels, size)
