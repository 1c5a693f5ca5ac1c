"""Masks as COCO compressed RLE bytes, the encoding of the ``rle`` column of every table.

The format (pycocotools): the mask is read column-major (Fortran order, down each column, left
to right); the counts are the lengths of alternating runs starting with background; each count
is written as a signed difference to the count two places before it (from the fourth count on)
in little-endian 5-bit groups, 6 bits per ASCII character offset by 48 (bit 0x20 = "more
groups follow", bit 0x10 of the last group = sign). The column stores that ASCII string as bytes.

pycocotools wants Fortran-ordered uint8 masks and trusts its input: counts that sum to fewer
pixels than ``height * width`` decode into uninitialised memory. :func:`decode` therefore checks
the counts (:func:`rle_counts`) before decoding. Its decode also warns under numpy 2.4; the
warning is silenced around each call with ``warnings.catch_warnings``, which (before Python 3.14)
swaps process-wide filters: harmless here, but another thread's filters may be ignored meanwhile.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as coco_mask


@dataclass(frozen=True, slots=True)
class EncodedMask:
    """One object's mask, ready for a masks row."""

    object_id: int
    rle: bytes  # COCO compressed counts
    area: int  # foreground pixels
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels; zeros when area == 0


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"mask size must be positive, got height={height}, width={width}")


def encode(mask: np.ndarray) -> bytes:
    """A 2-D mask (H x W; bool, or any dtype where nonzero = foreground) -> compressed counts."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {mask.shape}")
    _check_size(*mask.shape)
    fortran = np.asfortranarray(mask if mask.dtype == np.bool_ else mask != 0)
    return coco_mask.encode(fortran.view(np.uint8)[:, :, None])[0]["counts"]


def encode_label_map(labels: np.ndarray, object_ids: Sequence[int]) -> list[EncodedMask]:
    """The mask of every id in ``object_ids`` inside a label map (H x W integers), in the order
    given. An id absent from ``labels`` gets an empty mask (area 0). One pycocotools call for all
    objects: the H x W x N stack is written directly in Fortran order, the layout pycocotools
    needs, so it is never copied."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D (H x W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label map must hold integers, got dtype {labels.dtype}")
    _check_size(*labels.shape)
    ids = np.asarray(list(object_ids), dtype=np.int64)
    if ids.size == 0:
        return []
    if len(set(ids.tolist())) != ids.size:
        raise ValueError(f"object ids must be distinct, got {ids.tolist()}")
    stack = np.empty((*labels.shape, ids.size), dtype=np.bool_, order="F")  # H x W x N
    np.equal(labels[:, :, None], ids[None, None, :], out=stack)
    rles = coco_mask.encode(stack.view(np.uint8))
    areas = coco_mask.area(rles)
    boxes = coco_mask.toBbox(rles)
    return [
        EncodedMask(
            object_id=int(obj),
            rle=rle["counts"],
            area=int(area),
            bbox=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        )
        for obj, rle, area, box in zip(ids.tolist(), rles, areas, boxes, strict=True)
    ]


def rle_counts(rle: bytes) -> np.ndarray:
    """Compressed counts -> the uncompressed run lengths (int64, background run first).

    Vectorised over the bytes: characters are split into numbers at each group without the
    0x20 "more" bit, each number is the sum of its 5-bit groups, negative when the last group has
    the 0x10 bit, and from the fourth number on each is a difference to the count two before, so
    the even and odd positions are two running sums. Raises ValueError on malformed bytes.
    """
    if isinstance(rle, str):
        rle = rle.encode("ascii")
    codes = np.frombuffer(rle, dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        raise ValueError("RLE is empty")
    if codes.min() < 0 or codes.max() > 63:
        raise ValueError("RLE has characters outside the COCO alphabet ('0'..'o')")
    ends = (codes & 0x20) == 0
    if not ends[-1]:
        raise ValueError("RLE is truncated (its last character continues a number)")
    end_pos = np.flatnonzero(ends)
    starts = np.concatenate(([0], end_pos[:-1] + 1))
    group = np.arange(codes.size) - np.repeat(starts, end_pos - starts + 1)  # group within number
    if group.max() > 6:  # pycocotools' counts are 32-bit: at most 7 groups of 5 bits
        raise ValueError("RLE has a number longer than 7 characters")
    values = np.add.reduceat((codes & 0x1F) << (5 * group), starts)
    negative = (codes[end_pos] & 0x10) != 0
    values -= np.where(negative, np.left_shift(1, 5 * (group[end_pos] + 1)), 0)
    counts = values.copy()
    # counts[m] = values[m] + counts[m - 2] for m >= 3: running sums over odd positions from 1
    # and over even positions from 2 (counts[0] stands alone).
    counts[1::2] = np.cumsum(values[1::2])
    counts[2::2] = np.cumsum(values[2::2])
    if counts.min() < 0:
        raise ValueError("RLE has a negative run length")
    return counts


def decode(rle: bytes, height: int, width: int) -> np.ndarray:
    """Compressed counts of a ``height x width`` mask -> bool H x W, in Fortran order (as
    pycocotools returns it; ``np.ascontiguousarray`` it if C order matters).

    Raises ValueError when the runs do not add up to ``height * width`` pixels (a mask of another
    size, or corrupt bytes), which pycocotools would decode into garbage.
    """
    _check_size(height, width)
    total = int(rle_counts(rle).sum())
    if total != height * width:
        raise ValueError(
            f"RLE covers {total} pixels but the mask is {height} x {width} = {height * width}"
        )
    with warnings.catch_warnings():
        # pycocotools 2.0.11 builds its output through an __array__ without numpy 2's `copy`
        # keyword: numpy 2.4 warns on every call. Harmless; silenced here only.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*__array__")
        mask = coco_mask.decode({"size": [height, width], "counts": rle})
    # 0/1 uint8, so viewing it as bool is free; a copy to C order would cost as much as decoding.
    return mask.view(np.bool_)


def iou(a: bytes, b: bytes, height: int, width: int) -> float:
    """Intersection over union of two compressed masks of the same size, computed on the runs
    (no decoding). Two empty masks agree perfectly: 1."""
    _check_size(height, width)
    size = [int(height), int(width)]
    first, second = {"size": size, "counts": a}, {"size": size, "counts": b}
    areas = coco_mask.area([first, second])
    if areas[0] == 0 and areas[1] == 0:
        return 1.0
    return float(coco_mask.iou([first], [second], [0])[0][0])
