"""J&F as the DAVIS 2017 semi-supervised benchmark computes it, vectorised over frames.

The numbers match the official toolkit (Perazzi et al. 2016; Pont-Tuset et al. 2017), see
``shared/spec/davis_metrics.md``:

- J of an object on a frame is ``|P & G| / |P | G|`` (1 when both are empty);
- F compares one-pixel boundaries (the toolkit's ``seg2bmap``), each dilated by a disk of radius
  ``ceil(bound_th * image diagonal)`` (8 px at 854x480), and is the harmonic mean of boundary
  precision and recall;
- per object: the mean over the evaluated frames, which are all frames that have ground truth except
  the first (the seed) and the last; per sequence: the mean over its objects; dataset: the mean over
  **all objects of all sequences**.

Speed: a 100-frame 480p sequence holds about 41 M pixels per object mask, and the disk dilation is
the expensive step. Every per-pixel operation here is a bitwise AND / OR / XOR or a shift, which
treats each bit on its own, so the frames are packed eight to a byte (bit ``t % 8`` of byte plane
``t // 8`` is frame ``t``) and a single numpy operation processes eight frames at once. The
dilation is exact: the disk is a union of horizontal runs, one per row offset (see
:func:`disk_dilation`), so no floating-point distance is ever compared with the radius.

Shapes: a mask stack is ``T x H x W`` bool (T frames), a label map ``H x W`` of object ids.
Sizes in messages are spelled ``WxH`` (width x height), as in :mod:`stm_core.io`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "DEFAULT_BOUND_TH",
    "SequenceScores",
    "boundary_map",
    "boundary_radius",
    "disk_dilation",
    "evaluate_sequence",
    "f_measure",
    "format_table",
    "jaccard",
    "summarize",
]

logger = logging.getLogger(__name__)

DEFAULT_BOUND_TH = 0.008
"""The toolkit's boundary tolerance, as a fraction of the image diagonal."""

# 0x01 in every byte of a 64-bit word: shifted left by b, it selects bit b (one frame) of 8 pixels.
_BYTE_LANES = np.uint64(0x0101010101010101)


# --------------------------------------------------------------------------------------------
# Scores of one sequence


@dataclass(frozen=True)
class SequenceScores:
    """Per-object J and F of one sequence (fractions in [0, 1]).

    ``j[k]`` and ``f[k]`` are object ``k``'s means over the evaluated frames; ``object_ids`` is
    sorted and names exactly the keys of both dicts.
    """

    object_ids: tuple[int, ...]
    j: dict[int, float]
    f: dict[int, float]

    def __post_init__(self) -> None:
        if not self.object_ids:
            raise ValueError("SequenceScores needs at least one object")
        ids = set(self.object_ids)
        if set(self.j) != ids or set(self.f) != ids:
            raise ValueError(
                f"j and f must have exactly the keys {sorted(ids)}, "
                f"got {sorted(self.j)} and {sorted(self.f)}"
            )

    @property
    def j_mean(self) -> float:
        """Sequence J: the mean of its objects' J."""
        return float(np.mean([self.j[k] for k in self.object_ids]))

    @property
    def f_mean(self) -> float:
        """Sequence F: the mean of its objects' F."""
        return float(np.mean([self.f[k] for k in self.object_ids]))

    @property
    def j_and_f(self) -> float:
        """Sequence J&F: ``(J + F) / 2``."""
        return (self.j_mean + self.f_mean) / 2


# --------------------------------------------------------------------------------------------
# Bit-packed frame stacks: eight frames per byte


def _pack_frames(masks: Sequence[np.ndarray]) -> np.ndarray:
    """T bool ``H x W`` masks -> ``ceil(T / 8) x H x W`` uint8, eight frames per byte.

    Frame t is bit ``t % 8`` of plane ``t // 8``; frames past T, up to the next multiple of 8, are
    empty. ``masks`` may be a ``T x H x W`` array or a list of frames, so a sequence of label maps
    is packed frame by frame without first being stacked into one array.
    """
    height, width = masks[0].shape
    packed = np.zeros((-(-len(masks) // 8), height, width), dtype=np.uint8)
    for t, mask in enumerate(masks):
        packed[t // 8] |= mask.view(np.uint8) << (t % 8)
    return packed


def _count_per_frame(packed: np.ndarray, n_frames: int) -> np.ndarray:
    """Number of set pixels in each of the first ``n_frames`` frames of a packed stack (int64 [T]).

    Eight pixels (bytes) are read as one 64-bit word; masking with ``_BYTE_LANES << bit`` keeps one
    frame's bit of each, and a popcount adds them up.
    """
    n_planes = packed.shape[0]
    flat = np.ascontiguousarray(packed).reshape(n_planes, -1)
    if flat.shape[1] % 8:
        flat = np.pad(flat, ((0, 0), (0, -flat.shape[1] % 8)))
    words = flat.view(np.uint64)
    counts = np.empty((n_planes, 8), dtype=np.int64)
    for bit in range(8):
        counts[:, bit] = np.bitwise_count(words & (_BYTE_LANES << np.uint64(bit))).sum(axis=1)
    return counts.reshape(-1)[:n_frames]


# --------------------------------------------------------------------------------------------
# Boundaries and their dilation (work on bool stacks and on packed ones alike)


def _boundary(seg: np.ndarray) -> np.ndarray:
    """The ``seg2bmap`` boundary of ``... x H x W`` bool or packed-uint8 masks (same dtype back).

    The toolkit compares each pixel with its east, south and south-east neighbours, with zeros
    beyond the image, and then overwrites the last row (east only), the last column (south only)
    and the bottom-right pixel (never a boundary). Written per region, that is:

    - rows < H-1, columns < W-1: differs from E, S or SE;
    - last row, columns < W-1: differs from E;
    - last column, rows < H-1: differs from S;
    - bottom-right pixel: not a boundary.

    So a mask that fills the whole image has no boundary at all, and a pixel on the last row or
    column is not a boundary just because the image ends there.
    """
    out = np.zeros_like(seg)
    core = seg[..., :-1, :-1]
    out[..., :-1, :-1] = (
        (core ^ seg[..., :-1, 1:]) | (core ^ seg[..., 1:, :-1]) | (core ^ seg[..., 1:, 1:])
    )
    out[..., -1, :-1] = seg[..., -1, :-1] ^ seg[..., -1, 1:]
    out[..., :-1, -1] = seg[..., :-1, -1] ^ seg[..., 1:, -1]
    return out


def _disk_half_widths(radius: int) -> dict[int, int]:
    """Row offset dy -> half-width of the disk's row: ``|dx| <= isqrt(r^2 - dy^2)``.

    This is exactly ``skimage.morphology.disk(radius)``, whose pixels are ``dx^2 + dy^2 <= r^2``.
    """
    return {dy: math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1)}


def _dilate(bits: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``... x H x W`` bool or packed masks by ``disk(radius)``, zeros outside.

    The disk is a union of horizontal runs ``{(dy, dx): |dx| <= w(dy)}``. First the image is
    dilated by each needed run ``[-w, w]`` (built up one column offset at a time), then the row
    for offset dy is OR-ed in shifted by dy. Cost: about 4 * radius ORs of the whole stack.
    """
    half_widths = _disk_half_widths(radius)
    needed = set(half_widths.values())
    runs: dict[int, np.ndarray] = {}
    run = bits.copy()
    for w in range(radius + 1):
        if w > 0:
            run[..., w:] |= bits[..., :-w]
            run[..., :-w] |= bits[..., w:]
        if w in needed:
            runs[w] = run.copy()
    out = runs[half_widths[0]].copy()
    for dy in range(1, radius + 1):
        row = runs[half_widths[dy]]  # the disk is symmetric: dy and -dy have the same run
        out[..., dy:, :] |= row[..., :-dy, :]
        out[..., :-dy, :] |= row[..., dy:, :]
    return out


def boundary_map(masks: np.ndarray) -> np.ndarray:
    """One-pixel boundaries (the DAVIS ``seg2bmap``) of ``T x H x W`` (or ``H x W``) masks -> bool.

    Non-zero means foreground. Only the toolkit's case where the boundary map has the image's own
    size is provided. See :func:`_boundary` for the exact rule at the last row and column.
    """
    seg = np.asarray(masks).astype(bool, copy=False)
    if seg.ndim < 2 or 0 in seg.shape[-2:]:
        raise ValueError(f"boundary_map needs ... x H x W masks with H, W >= 1, got {seg.shape}")
    return _boundary(seg)


def disk_dilation(masks: np.ndarray, radius: int) -> np.ndarray:
    """Dilate ``T x H x W`` (or ``H x W``) bool masks by ``skimage.morphology.disk(radius)``.

    Pixels outside the image count as background (like ``cv2.dilate`` and
    ``scipy.ndimage.binary_dilation`` with their default borders).
    """
    seg = np.asarray(masks).astype(bool, copy=False)
    if radius < 0 or int(radius) != radius:
        raise ValueError(f"radius must be a non-negative integer, got {radius}")
    if seg.ndim < 2:
        raise ValueError(f"disk_dilation needs ... x H x W masks, got shape {seg.shape}")
    return _dilate(seg, int(radius))


def boundary_radius(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Dilation radius in pixels: ``ceil(bound_th * sqrt(H^2 + W^2))``, as in the toolkit.

    As in the toolkit, ``bound_th >= 1`` is a radius in pixels itself (here it must be whole).
    """
    if bound_th <= 0:
        raise ValueError(f"bound_th must be > 0, got {bound_th}")
    if bound_th >= 1:
        if int(bound_th) != bound_th:
            raise ValueError(f"a bound_th >= 1 is a radius in pixels and must be whole: {bound_th}")
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(height, width))


# --------------------------------------------------------------------------------------------
# Per-frame J and F


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both stacks as ``T x H x W`` bool, or InputError if they cannot be compared."""
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.ndim != 3 or 0 in pred.shape:
        raise InputError(
            "prediction", f"expected a non-empty T x H x W mask stack, got {pred.shape}"
        )
    if pred.shape != gt.shape:
        raise InputError(
            "prediction", f"mask stack has shape {pred.shape} but ground truth has {gt.shape}"
        )
    return pred, gt


def _jaccard_packed(pred: np.ndarray, gt: np.ndarray, n_frames: int) -> np.ndarray:
    """J per frame (float64 [T]) of packed stacks; 1 where the union is empty."""
    inter = _count_per_frame(pred & gt, n_frames)
    union = _count_per_frame(pred | gt, n_frames)
    return np.divide(inter, union, out=np.ones(n_frames), where=union > 0)


def _f_measure_packed(pred: np.ndarray, gt: np.ndarray, n_frames: int, radius: int) -> np.ndarray:
    """F per frame (float64 [T]) of packed stacks, boundary tolerance ``radius`` pixels.

    The toolkit's cases for empty boundaries fall out of one rule, "precision is 1 when the
    predicted boundary is empty, recall is 1 when the true one is": an empty predicted boundary
    matches no true boundary pixel (recall 0 unless that is empty too), and vice versa.
    """
    pred_edge, gt_edge = _boundary(pred), _boundary(gt)
    n_pred = _count_per_frame(pred_edge, n_frames)
    n_gt = _count_per_frame(gt_edge, n_frames)
    pred_hits = _count_per_frame(pred_edge & _dilate(gt_edge, radius), n_frames)
    gt_hits = _count_per_frame(gt_edge & _dilate(pred_edge, radius), n_frames)
    precision = np.divide(pred_hits, n_pred, out=np.ones(n_frames), where=n_pred > 0)
    recall = np.divide(gt_hits, n_gt, out=np.ones(n_frames), where=n_gt > 0)
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros(n_frames), where=total > 0)


def jaccard(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Region similarity J per frame of ``T x H x W`` masks -> float64 [T]; 1 if both are empty."""
    pred, gt = _check_pair(pred, gt)
    return _jaccard_packed(_pack_frames(pred), _pack_frames(gt), pred.shape[0])


def f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> np.ndarray:
    """Boundary accuracy F per frame of ``T x H x W`` masks -> float64 [T].

    "Empty" means an empty ``seg2bmap`` boundary, as in the toolkit: both empty -> 1; only the
    prediction's -> 0 (precision 1, recall 0); only the ground truth's -> 0 (precision 0, recall 1).
    """
    pred, gt = _check_pair(pred, gt)
    radius = boundary_radius(pred.shape[1], pred.shape[2], bound_th)
    return _f_measure_packed(_pack_frames(pred), _pack_frames(gt), pred.shape[0], radius)


# --------------------------------------------------------------------------------------------
# A sequence of label maps


def _object_ids(frames: Sequence[np.ndarray]) -> list[int]:
    """The non-zero ids found in any of the ``H x W`` label maps, ascending."""
    present = np.zeros(256, dtype=bool)  # uint8 / bool maps: a lookup table is the fastest way
    found: set[int] = set()
    for labels in frames:
        if labels.dtype in (np.uint8, np.bool_):
            present[labels.view(np.uint8)] = True
        else:
            found.update(int(k) for k in np.unique(labels))
    found.update(int(k) for k in np.flatnonzero(present))
    found.discard(0)
    return sorted(found)


def _check_frames(
    pred: Sequence[np.ndarray], gt: Sequence[np.ndarray], name: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Both sequences as lists of ``H x W`` integer arrays of one size.

    Raises InputError naming the sequence and, where it is about one frame, the frame.
    """
    if len(pred) != len(gt):
        raise InputError(name, f"{len(pred)} predicted frames but {len(gt)} ground-truth frames")
    if len(gt) < 3:
        raise InputError(
            name,
            f"only {len(gt)} ground-truth frame(s): the first and the last are never scored, "
            "so J&F needs at least 3",
        )
    pred_arrays, gt_arrays = [], []
    size: tuple[int, ...] | None = None
    for i, (p, g) in enumerate(zip(pred, gt, strict=True)):
        p, g = np.asarray(p), np.asarray(g)
        for what, labels in (("prediction", p), ("ground truth", g)):
            if labels.ndim != 2 or not (
                np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
            ):
                raise InputError(
                    f"{name} frame {i}",
                    f"{what} must be an H x W integer label map, got {labels.dtype} {labels.shape}",
                )
        if p.shape != g.shape:
            raise InputError(
                f"{name} frame {i}",
                f"prediction is {p.shape[1]}x{p.shape[0]} but ground truth is "
                f"{g.shape[1]}x{g.shape[0]} (width x height)",
            )
        if size is None:
            size = g.shape
        elif g.shape != size:
            raise InputError(
                f"{name} frame {i}",
                f"frame is {g.shape[1]}x{g.shape[0]} but frame 0 is {size[1]}x{size[0]} "
                "(width x height); all frames of a sequence must have one size",
            )
        pred_arrays.append(p)
        gt_arrays.append(g)
    return pred_arrays, gt_arrays


def evaluate_sequence(
    pred: Sequence[np.ndarray],
    gt: Sequence[np.ndarray],
    *,
    name: str = "sequence",
    bound_th: float = DEFAULT_BOUND_TH,
    scored_frames: Mapping[int, Sequence[int]] | None = None,
) -> SequenceScores:
    """Per-object J and F of one sequence.

    ``pred[i]`` and ``gt[i]`` are ``H x W`` label maps (0 = background, k = object k) of the i-th
    frame that has ground truth, in order; ``name`` only labels error messages. Frames ``0`` and
    ``len(gt) - 1`` are not scored (the first is the given seed), so at least 3 frames are needed.
    The objects are the non-zero ids found in any ground-truth frame (the first and last
    included), so an object that leaves the scene is still scored (J = F = 1 on frames where both
    masks are empty). Ids found only in the prediction are ignored. (The official toolkit takes ids
    1..max of the first frame instead; the two agree on DAVIS, where every object is in frame 0 and
    ids are contiguous. DAVIS void pixels, 255, are not special here: ids are ids.)

    ``scored_frames`` (object id -> positions in ``gt``) replaces that default plan: exactly the
    objects it names are scored, each on its own frames. It is for objects seeded after frame 0
    (:func:`stm_core.evaluation.scored_frames`), whose frames up to their seed say nothing of how
    well they were tracked.

    Raises InputError (a ValueError) naming the frame for mismatched sizes or bad arrays, and for
    fewer than 3 frames or a ground truth without any object.
    """
    pred_frames, gt_frames = _check_frames(pred, gt, name)
    object_ids = _object_ids(gt_frames)
    if not object_ids:
        raise InputError(name, "the ground truth holds no object: every pixel is 0")
    if scored_frames is None:
        plan = {k: range(1, len(gt_frames) - 1) for k in object_ids}
    else:
        plan = _check_plan(scored_frames, object_ids, len(gt_frames), name)
    radius = boundary_radius(*gt_frames[0].shape, bound_th)

    j: dict[int, float] = {}
    f: dict[int, float] = {}
    for k, positions in plan.items():
        n_frames = len(positions)
        pred_k = _pack_frames([pred_frames[i] == k for i in positions])
        gt_k = _pack_frames([gt_frames[i] == k for i in positions])
        j[k] = float(_jaccard_packed(pred_k, gt_k, n_frames).mean())
        f[k] = float(_f_measure_packed(pred_k, gt_k, n_frames, radius).mean())
    logger.debug("%s: objects %s, J %s, F %s", name, sorted(plan), j, f)
    return SequenceScores(tuple(sorted(plan)), j, f)


def _check_plan(
    scored_frames: Mapping[int, Sequence[int]], object_ids: list[int], n_frames: int, name: str
) -> dict[int, list[int]]:
    """``scored_frames`` with sorted positions, or InputError for an object the ground truth
    never holds, an object with no frame, or a position outside ``0 .. n_frames - 1``."""
    if not scored_frames:
        raise InputError(name, "scored_frames names no object")
    plan: dict[int, list[int]] = {}
    for k, positions in sorted(scored_frames.items()):
        if k not in object_ids:
            raise InputError(name, f"scored_frames names object {k}, absent from the ground truth")
        positions = sorted(int(i) for i in positions)
        if not positions:
            raise InputError(name, f"scored_frames gives object {k} no frame")
        if positions[0] < 0 or positions[-1] >= n_frames:
            raise InputError(
                name,
                f"scored_frames gives object {k} frames {positions[0]}..{positions[-1]}, "
                f"outside the {n_frames} ground-truth frames",
            )
        plan[k] = positions
    return plan


# --------------------------------------------------------------------------------------------
# A dataset


def summarize(scores: Mapping[str, SequenceScores]) -> dict[str, Any]:
    """Per-sequence and dataset J, F and J&F (fractions in [0, 1], like the toolkit).

    Returns ``{"sequences": {name: {"J", "F", "J&F"}}, "mean": {"J", "F", "J&F"}}``. The dataset
    J and F are means over all objects of all sequences, not over sequences, so a sequence with
    three objects weighs three times as much as one with a single object.
    """
    if not scores:
        raise ValueError("summarize needs at least one sequence")
    sequences = {
        name: {"J": s.j_mean, "F": s.f_mean, "J&F": s.j_and_f} for name, s in scores.items()
    }
    all_j = [s.j[k] for s in scores.values() for k in s.object_ids]
    all_f = [s.f[k] for s in scores.values() for k in s.object_ids]
    j_mean, f_mean = float(np.mean(all_j)), float(np.mean(all_f))
    return {
        "sequences": sequences,
        "mean": {"J": j_mean, "F": f_mean, "J&F": (j_mean + f_mean) / 2},
    }


def format_table(summary: Mapping[str, Any]) -> str:
    """A fixed-width text table of a :func:`summarize` result, in percent with one decimal.

    One row per sequence in the summary's order, then a ``mean`` row (the dataset mean over all
    objects, which is why it can differ from the mean of the rows above it), then a ``not
    scored: name: why`` line for each sequence of the summary's ``unscored``, if it has one.
    """
    columns = ("J", "F", "J&F")
    rows = [(name, values) for name, values in summary["sequences"].items()]
    rows.append(("mean", summary["mean"]))
    name_width = max(len("sequence"), *(len(name) for name, _ in rows))
    header = "sequence".ljust(name_width) + "".join(f"{c:>8}" for c in columns)
    rule = "-" * len(header)
    lines = [header, rule]
    for i, (name, values) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append(rule)
        cells = "".join(f"{100 * values[c]:>8.1f}" for c in columns)
        lines.append(name.ljust(name_width) + cells)
    lines.extend(f"not scored: {name}: {why}" for name, why in summary.get("unscored", {}).items())
    return "\n".join(lines)
