"""Whole-folder tasks behind the CLI: propagate one video folder, score folders of masks.

A folder is read by :mod:`pipeline.corpus` (the corpus job's own input side: the same task,
seed reader and frame iterator; a local path is an fsspec path too) and propagated by
:func:`~stm_core.propagation.propagate`, so the CLI stays a thin layer of argument parsing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stm_core.adaptation import Adaptation, adapt_to_seeds
from stm_core.codec import MASK_SUFFIX, natural_key
from stm_core.errors import InputError
from stm_core.evaluation import NOTHING_TO_SCORE, scored_frames
from stm_core.io import read_annotations, write_mask
from stm_core.metrics import SequenceScores, evaluate_sequence, format_table, summarize
from stm_core.model.network import STM
from stm_core.propagation import Precision, propagate

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
    precision: Precision = "fp32",
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
    for out in propagate(model, frames, seeds, mem_every, max_memory_frames, precision=precision):
        write_mask(out_dir / f"{names[out.frame_index]}.png", out.labels)
        if progress is not None:
            progress(out.frame_index + 1, len(names))
    return len(names)


def sequence_folders(root: Path) -> dict[str, Path]:
    """Name -> folder of every sequence under ``root``: each folder (at any depth, hidden ones
    skipped) that directly holds ``*.png`` files, named by its path below ``root`` with ``/``
    (``blackswan``, or ``set1/cat`` for an export of a corpus with nested folders)."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(f.lower().endswith(MASK_SUFFIX) and not f.startswith(".") for f in files):
            name = Path(folder).relative_to(root).as_posix()
            if name != ".":
                found[name] = Path(folder)
    return dict(sorted(found.items(), key=lambda item: natural_key(item[0])))


def evaluate_folders(
    pred_root: str | Path,
    gt_root: str | Path,
    sequences: Sequence[str] | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """J&F of the sequences of ``gt_root`` (:func:`sequence_folders`) that ``pred_root`` has too.

    ``sequences`` picks some of them (each must be a ground-truth sequence). A ground-truth
    sequence without a prediction folder is listed under ``not_predicted`` (with ``strict`` it
    is an error); prediction folders without ground truth are ignored. Each ground-truth PNG of a
    predicted sequence must have a prediction of the same name; extra predicted frames are
    ignored. Objects first annotated after a sequence's first mask are scored only after it, as
    :func:`pipeline.evaluation.evaluate_root` scores them. Returns
    :func:`stm_core.metrics.summarize`'s dict plus ``unscored`` (sequence -> why: masks that
    only seed objects) and ``not_predicted`` (sequence names, sorted).
    """
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    for root in (pred_root, gt_root):
        if not root.is_dir():
            raise InputError(root, "folder does not exist")
    gt_sequences = sequence_folders(gt_root)
    if not gt_sequences:
        raise InputError(gt_root, f"no sequence folders (folders of *{MASK_SUFFIX})")
    if sequences is not None:
        unknown = [s for s in sequences if s not in gt_sequences]
        if unknown:
            raise InputError(
                gt_root,
                f"no ground truth for sequence(s) {unknown}; it has {_listed(gt_sequences)}",
            )
        gt_sequences = {s: gt_sequences[s] for s in dict.fromkeys(sequences)}
    scores: dict[str, SequenceScores] = {}
    unscored: dict[str, str] = {}
    not_predicted: list[str] = []
    for name, gt_dir in gt_sequences.items():
        gt = read_annotations(gt_dir)
        stems = sorted(gt, key=natural_key)
        plan = scored_frames([gt[s] for s in stems])
        if len(stems) >= 3 and not plan:
            unscored[name] = NOTHING_TO_SCORE
            continue
        pred_dir = pred_root / name
        if not pred_dir.is_dir():
            if strict:
                raise InputError(pred_dir, f"no predictions for sequence {name!r} (--strict)")
            not_predicted.append(name)
            continue
        missing = [s for s in stems if not (pred_dir / f"{s}{MASK_SUFFIX}").is_file()]
        if missing:
            raise InputError(pred_dir, f"missing predicted masks for frames {missing[:5]}")
        pred = read_annotations(pred_dir)
        scores[name] = evaluate_sequence(
            [pred[s] for s in stems],
            [gt[s] for s in stems],
            name=name,
            scored_frames=plan or None,
        )
    if not scores:
        if not_predicted:
            predicted = sequence_folders(pred_root)
            raise InputError(
                pred_root,
                f"no predictions for any sequence of {gt_root} ({_listed(not_predicted)}); "
                f"{pred_root} has {_listed(predicted)}",
            )
        raise InputError(gt_root, f"no sequence to score: {NOTHING_TO_SCORE}")
    return summarize(scores) | {"unscored": unscored, "not_predicted": sorted(not_predicted)}


def _listed(names: Iterable[str], shown: int = 5) -> str:
    names = list(names)
    if not names:
        return "no sequence folders"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more


def format_evaluation(summary: Mapping[str, Any]) -> str:
    """:func:`stm_core.metrics.format_table` plus a ``not predicted: name`` line for each
    ground-truth sequence without predictions."""
    lines = [format_table(summary)]
    lines += [f"not predicted: {name}" for name in summary.get("not_predicted", [])]
    return "\n".join(lines)
