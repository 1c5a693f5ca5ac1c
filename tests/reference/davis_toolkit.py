"""A deliberately plain J&F, written the way the DAVIS 2017 evaluation toolkit computes it.

Why this exists: ``stm_core.metrics`` packs frames into bits and dilates with shifted ORs to be
fast. This module is the yardstick for it, so it shares no code with it and does everything the
slow, obvious way, one frame and one object at a time (spec: ``shared/spec/davis_metrics.md``):

- ``seg2bmap`` with the toolkit's explicit east / south / south-east shifted copies and its
  overwrites of the last row, the last column and the bottom-right pixel;
- the dilation is ``scipy.ndimage.binary_dilation`` with ``skimage.morphology.disk`` as the
  footprint, per frame (the toolkit uses ``cv2.dilate`` with the same disk; both treat pixels
  outside the image as background);
- precision / recall with the toolkit's if / elif cases for empty boundaries;
- per object: the mean over frames 1 .. n-2; dataset: the mean over all objects of all sequences.

Shapes: a mask or label map is ``H x W``; sequences are lists of them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import disk


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """The toolkit's one-pixel boundary of an ``H x W`` mask, for a map the size of the image."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def db_eval_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """J of one ``H x W`` frame; 1 when the union is empty."""
    gt = gt.astype(bool)
    pred = pred.astype(bool)
    inter = np.sum(pred & gt)
    union = np.sum(pred | gt)
    if union == 0:
        return 1.0
    return float(inter) / float(union)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of one ``H x W`` mask by ``disk(radius)``, background beyond the border."""
    return ndimage.binary_dilation(mask, structure=disk(radius).astype(bool), border_value=0)


def f_measure(foreground_mask: np.ndarray, gt_mask: np.ndarray, bound_th: float = 0.008) -> float:
    """F of one ``H x W`` frame: ``foreground_mask`` is the prediction, ``gt_mask`` the truth."""
    assert foreground_mask.shape == gt_mask.shape
    if bound_th >= 1:
        bound_pix = int(bound_th)
    else:
        bound_pix = int(np.ceil(bound_th * np.linalg.norm(foreground_mask.shape)))

    fg_boundary = seg2bmap(foreground_mask)
    gt_boundary = seg2bmap(gt_mask)
    fg_dil = dilate(fg_boundary, bound_pix)
    gt_dil = dilate(gt_boundary, bound_pix)

    gt_match = gt_boundary & fg_dil
    fg_match = fg_boundary & gt_dil
    n_fg = int(np.sum(fg_boundary))
    n_gt = int(np.sum(gt_boundary))

    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)

    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def evaluate_sequence(
    pred: list[np.ndarray], gt: list[np.ndarray], bound_th: float = 0.008
) -> dict[int, dict[str, list[float]]]:
    """Per-object, per-frame J and F: ``{object id: {"J": [...], "F": [...]}}``.

    Objects are the non-zero ids in any ground-truth frame; frames 1 .. n-2 are scored.
    """
    object_ids = sorted({int(v) for g in gt for v in np.unique(g) if v != 0})
    result: dict[int, dict[str, list[float]]] = {}
    for k in object_ids:
        js, fs = [], []
        for t in range(1, len(gt) - 1):
            pred_mask = pred[t] == k
            gt_mask = gt[t] == k
            js.append(db_eval_iou(gt_mask, pred_mask))
            fs.append(f_measure(pred_mask, gt_mask, bound_th))
        result[k] = {"J": js, "F": fs}
    return result


def object_means(per_frame: dict[int, dict[str, list[float]]]) -> dict[int, tuple[float, float]]:
    """``{object id: (mean J, mean F)}`` over the scored frames."""
    return {k: (float(np.mean(v["J"])), float(np.mean(v["F"]))) for k, v in per_frame.items()}


def dataset_means(
    sequences: dict[str, dict[int, dict[str, list[float]]]],
) -> tuple[float, float, float]:
    """Dataset ``(J, F, J&F)``: J and F averaged over all objects of all sequences."""
    j_all, f_all = [], []
    for per_frame in sequences.values():
        for j, f in object_means(per_frame).values():
            j_all.append(j)
            f_all.append(f)
    j_mean = sum(j_all) / len(j_all)
    f_mean = sum(f_all) / len(f_all)
    assert math.isfinite(j_mean) and math.isfinite(f_mean)
    return j_mean, f_mean, (j_mean + f_mean) / 2
