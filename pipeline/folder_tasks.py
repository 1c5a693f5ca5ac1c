"""Whole-folder tasks behind the CLI: propagate one video folder, score folders of masks.

A folder is read by :mod:`pipeline.corpus` (the corpus job's own input side: the same task,
seed reader and frame iterator; a local path is an fsspec path too) and propagated by
:func:`~stm_core.propagation.propagate`, so the CLI stays a thin layer of argument parsing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from stm_core.adaptation import Adaptation, adapt_to_seeds
from stm_core.codec import natural_key
from stm_core.errors import InputError
from stm_core.evaluation import NOTHING_TO_SCORE, scored_frames
from stm_core.io import read_annotations, write_mask
from stm_core.metrics import SequenceScores, evaluate_sequence, summarize
from stm_core.model.network import STM
from stm_core.propagation import propagate

from .corpus import folder_video, frames_at, iter_frames, probe, read_seeds

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
    task, fs = folder_video(str(frames_dir), str(seeds_dir))
    info = probe(task, fs)
    seeds = read_seeds(task, fs, info.size, info.num_frames, resize_mismatched=resize_seeds)
    if adaptation is not None and adaptation.enabled:
        seed_frames = frames_at(task, fs, seeds, expected_size=info.size)
        model = adapt_to_seeds(model, seed_frames, seeds, adaptation)
    out_dir = Path(out_dir)
    names = task.frame_names
    frames = iter_frames(task, fs, expected_size=info.size)
    for out in propagate(model, frames, seeds, mem_every, max_memory_frames):
        write_mask(out_dir / f"{names[out.frame_index]}.png", out.labels)
        if progress is not None:
            progress(out.frame_index + 1, len(names))
    return len(names)


def evaluate_folders(pred_root: str | Path, gt_root: str | Path) -> dict[str, Any]:
    """J&F of every sequence folder of ``gt_root`` against the same-named folder of ``pred_root``.

    Each ground-truth PNG must have a prediction with the same name; extra predicted frames are
    ignored. Objects first annotated after a sequence's first mask are scored only after it,
    as :func:`pipeline.evaluation.evaluate_root` scores them. Returns
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
