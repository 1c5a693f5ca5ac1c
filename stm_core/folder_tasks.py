"""Whole-folder tasks on local disk behind the CLI: propagate one video folder, score folders.

They join :mod:`stm_core.io` (files) with :func:`~stm_core.propagation.propagate` and
:mod:`stm_core.metrics` (arrays), so the CLI stays a thin layer of argument parsing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .adaptation import Adaptation, adapt_to_seeds
from .errors import InputError
from .evaluation import NOTHING_TO_SCORE, scored_frames
from .io import (
    frame_size,
    iter_frames,
    natural_key,
    read_annotations,
    read_frames_at,
    read_seeds,
    video_from_dirs,
    write_mask,
)
from .metrics import SequenceScores, evaluate_sequence, summarize
from .model.network import STM
from .propagation import propagate

Progress = Callable[[int, int], None]  # (frames done, total frames)


def propagate_folder(
    model: STM,
    frames_dir: str | Path,
    seeds_dir: str | Path,
    out_dir: str | Path,
    mem_every: int = 5,
    max_memory_frames: int | None = None,
    resize_seeds: bool = False,
    progress: Progress | None = None,
    adaptation: Adaptation | None = None,
) -> int:
    """Label every frame of ``frames_dir`` from the seed PNGs in ``seeds_dir`` (matched to frames
    by file stem); write one DAVIS palette PNG per frame, named like the frame, into ``out_dir``.
    With ``adaptation``, a copy of the model is fine-tuned on the seed frames first
    (:mod:`stm_core.adaptation`). Returns the number of frames written."""
    video = video_from_dirs(frames_dir, seeds_dir)
    if not video.mask_paths:
        raise InputError(seeds_dir, "no seed masks (*.png) named like a frame")
    size = frame_size(video)
    seeds = read_seeds(video, size, resize_mismatched=resize_seeds)
    if adaptation is not None and adaptation.enabled:
        seed_frames = read_frames_at(video, seeds, size)
        model = adapt_to_seeds(model, seed_frames, seeds, adaptation)
    out_dir = Path(out_dir)
    names = video.frame_names()
    for out in propagate(model, iter_frames(video, size), seeds, mem_every, max_memory_frames):
        write_mask(out_dir / f"{names[out.frame_index]}.png", out.labels)
        if progress is not None:
            progress(out.frame_index + 1, len(video))
    return len(video)


def evaluate_folders(pred_root: str | Path, gt_root: str | Path) -> dict[str, Any]:
    """J&F of every sequence folder of ``gt_root`` against the same-named folder of ``pred_root``.

    Each ground-truth PNG must have a prediction with the same name; extra predicted frames are
    ignored. Objects first annotated after a sequence's first mask are scored only after it,
    as :func:`stm_core.evaluation.evaluate_root` scores them. Returns
    :func:`stm_core.metrics.summarize`'s dict plus ``unscored`` (sequence -> why), the
    sequences whose masks only seed objects.
    """
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    for root in (pred_root, gt_root):
        if not root.is_dir():
            raise InputError(root, "folder does not exist")
    sequences = sorted((p for p in gt_root.iterdir() if p.is_dir()), key=lambda p: p.name)
    if not sequences:
        raise InputError(gt_root, "no sequence folders")
    scores: dict[str, SequenceScores] = {}
    unscored: dict[str, str] = {}
    for gt_dir in sequences:
        gt = read_annotations(gt_dir)
        stems = sorted(gt, key=natural_key)
        plan = scored_frames([gt[s] for s in stems])
        if len(stems) >= 3 and not plan:
            unscored[gt_dir.name] = NOTHING_TO_SCORE
            continue
        pred_dir = pred_root / gt_dir.name
        if not pred_dir.is_dir():
            raise InputError(pred_dir, f"no predictions for sequence {gt_dir.name!r}")
        missing = [s for s in stems if not (pred_dir / f"{s}.png").is_file()]
        if missing:
            raise InputError(pred_dir, f"missing predicted masks for frames {missing[:5]}")
        pred = read_annotations(pred_dir)
        scores[gt_dir.name] = evaluate_sequence(
            [pred[s] for s in stems],
            [gt[s] for s in stems],
            name=gt_dir.name,
            scored_frames=plan or None,
        )
    if not scores:
        raise InputError(gt_root, f"no sequence to score: {NOTHING_TO_SCORE}")
    return summarize(scores) | {"unscored": unscored}
