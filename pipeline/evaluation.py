"""Score a model on a DAVIS or YouTube-VOS root, local or in object storage.

The videos are found and read by :mod:`pipeline.corpus` (the corpus job's own input side: the
same layout rules, seed reader and frame iterator) and scored by
:func:`stm_core.evaluation.evaluate_video` with the semi-supervised protocol described there.
Every annotation mask is ground truth; the seeds are each object's first appearance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from schemas.common import StorageOptions
from stm_core.adaptation import Adaptation
from stm_core.errors import InputError
from stm_core.evaluation import NOTHING_TO_SCORE, NothingToScoreError, evaluate_video
from stm_core.metrics import SequenceScores, summarize
from stm_core.model.network import STM
from stm_core.propagation import Precision

from .corpus import VideoTask, discover_dataset, frames_at, iter_frames, probe, read_seeds
from .corpus.frames import FrameScale

__all__ = ["MIN_ANNOTATED_FRAMES", "evaluate_root", "evaluate_task"]


MIN_ANNOTATED_FRAMES = 3  # the first and the last annotated frame are never scored


def evaluate_task(
    model: STM,
    task: VideoTask,
    fs: Any,
    mem_every: int = 5,
    max_memory_frames: int | None = None,
    adaptation: Adaptation | None = None,
    resize_mismatched: bool = True,
    precision: Precision = "fp32",
    max_side: int | None = None,
) -> SequenceScores:
    """Propagate one video from its first-appearance seeds and score its annotated frames.

    ``resize_mismatched`` resizes an annotation whose size differs from the frames (nearest),
    as real data needs (cutie-judo has an 853-wide mask beside 854-wide frames). ``max_side``
    propagates frames downscaled to that longer side, as the corpus job's
    ``max_frame_side`` does, and scores the masks brought back to the native size."""
    info = probe(task, fs)
    annotations = read_seeds(task, fs, info.size, info.num_frames, resize_mismatched)
    working = FrameScale.for_size(info.size, max_side).working
    return evaluate_video(
        model,
        iter_frames(task, fs, max_side, expected_size=info.size),
        annotations,
        task.video_id,
        mem_every,
        max_memory_frames,
        adaptation,
        frames_at=lambda indices: frames_at(task, fs, indices, max_side, info.size),
        precision=precision,
        working_size=working,
    )


def evaluate_root(
    model: STM,
    root: str | Path,
    mem_every: int = 5,
    max_memory_frames: int | None = None,
    adaptation: Adaptation | None = None,
    resolution: str = "480p",
    storage_options: StorageOptions | None = None,
    precision: Precision = "fp32",
    max_side: int | None = None,
    on_scored: Callable[[str, SequenceScores], None] | None = None,
    videos: Sequence[str] | None = None,
) -> dict[str, Any]:
    """J&F of every scorable video under a DAVIS / YouTube-VOS ``root`` (``summarize``'s
    result), plus ``unscored``: the videos with fewer than 3 annotated frames (the first and
    last are never scored) and why.

    A root of another form, or a video that cannot be listed, raises InputError
    (:func:`pipeline.corpus.discover_dataset`): a mean over other videos than the caller
    thinks would be worse than no number. ``max_side``: see :func:`evaluate_task`.
    ``on_scored(video_id, scores)`` is called after each video, so a run of hours (fine-tuning
    on every clip) shows its results as they come rather than only at the end.
    ``videos`` scores only the named videos (all of them by default); a name the root does not
    hold raises InputError, so a typo cannot shrink the mean silently.
    """
    uri = str(root)
    dataset = discover_dataset(uri, resolution, storage_options)
    unscored = {
        video_id: f"0 annotated frame(s), {MIN_ANNOTATED_FRAMES} needed"
        for video_id in dataset.unannotated
    }
    fs = dataset.fs
    tasks = dataset.tasks
    if videos is not None:
        wanted = set(videos)
        missing = sorted(wanted - {task.video_id for task in tasks})
        if missing:
            raise InputError(uri, f"no annotated video named {', '.join(missing)}")
        unscored = {}  # the videos left out are not ours to report
        tasks = [task for task in tasks if task.video_id in wanted]
    scores: dict[str, SequenceScores] = {}
    for task in tasks:
        annotated = len(task.seeds.frames) if task.seeds is not None else 0
        if annotated < MIN_ANNOTATED_FRAMES:
            unscored[task.video_id] = (
                f"{annotated} annotated frame(s), {MIN_ANNOTATED_FRAMES} needed"
            )
            continue
        try:
            scores[task.video_id] = evaluate_task(
                model,
                task,
                fs,
                mem_every,
                max_memory_frames,
                adaptation,
                precision=precision,
                max_side=max_side,
            )
        except NothingToScoreError:
            unscored[task.video_id] = NOTHING_TO_SCORE
            continue
        if on_scored is not None:
            on_scored(task.video_id, scores[task.video_id])
    if not scores:
        raise InputError(uri, "no video with an annotated frame to score")
    return summarize(scores) | {"unscored": dict(sorted(unscored.items()))}
