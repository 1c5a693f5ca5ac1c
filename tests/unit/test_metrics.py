"""J&F as the DAVIS 2017 toolkit defines it: hand-worked cases, then equality with a reference.

The expected numbers are either worked out by hand in the comments next to them or computed by
``tests/reference/davis_toolkit.py``, a per-frame loop written the way the toolkit does it (no
shared code with ``stm_core.metrics``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.morphology import disk

from stm_core.errors import InputError
from stm_core.metrics import (
    SequenceScores,
    boundary_map,
    boundary_radius,
    disk_dilation,
    evaluate_sequence,
    f_measure,
    format_table,
    jaccard,
    summarize,
)
from tests.reference import davis_toolkit as ref

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
ANNOTATIONS = REAL / "Annotations" / "480p"


def _square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def _shift(labels: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the content by (dy, dx) pixels; what moves in from outside is background."""
    out = np.zeros_like(labels)
    h, w = labels.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = labels[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _read_labels(path: Path) -> np.ndarray:
    """A DAVIS mask as a label map: 'L' {0, 255} is object 1, 'P' indices are the ids."""
    with Image.open(path) as image:
        values = np.array(image)
        if image.mode == "L":
            return (values > 0).astype(np.uint8)
    assert image.mode == "P", path
    return values.astype(np.uint8)


def _blobs(rng: np.random.Generator, n_frames: int, shape: tuple[int, int], n_objects: int):
    """Random smooth blobs: label maps with overlapping objects of irregular shape."""
    frames = []
    for _ in range(n_frames):
        labels = np.zeros(shape, dtype=np.uint8)
        for k in range(1, n_objects + 1):
            field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
            labels[field > 0.08] = k
        frames.append(labels)
    return frames


# --------------------------------------------------------------------------------------------
# boundary_map: the toolkit's seg2bmap


def test_boundary_of_one_pixel_is_the_2x2_block_ending_at_it():
    # (1,1) is set: it differs from its E/S/SE neighbours; (1,0) differs from its E = (1,1),
    # (0,1) from its S = (1,1), (0,0) from its SE = (1,1). Nothing else sees a change.
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 1] = True
    expected = np.zeros((4, 4), dtype=bool)
    expected[0:2, 0:2] = True
    np.testing.assert_array_equal(boundary_map(mask), expected)


def test_boundary_of_a_square_is_a_ring_shifted_half_a_pixel_up_left():
    # Square rows/cols 3..6 (side 4). Boundary: the row above (2, 2..6), the column left of it
    # (3..6, 2), its own last column (3..6, 6) and its own last row (6, 3..6): the outline of the
    # 5x5 box rows/cols 2..6, 4 * 4 = 16 pixels.
    b = boundary_map(_square((10, 10), 3, 3, 4))
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:7, 2:7] = True
    expected[3:6, 3:6] = False
    np.testing.assert_array_equal(b, expected)
    assert b.sum() == 16


def test_boundary_at_the_last_row_and_column_follows_the_toolkit():
    # Mask in the bottom-right corner, rows/cols 2..3 of 4x4. Worked out pixel by pixel:
    # (1,1): SE=(2,2) set; (1,2): S=(2,2) set; (2,1): E=(2,2) set  -> interior boundary;
    # last row only looks east: (3,1) vs (3,2) differs; (3,2) vs (3,3) does not;
    # last column only looks south: (1,3) vs (2,3) differs; (2,3) vs (3,3) does not;
    # (3,3) is never a boundary. The mask's own pixels on the image edge are not boundary.
    mask = np.zeros((4, 4), dtype=bool)
    mask[2:, 2:] = True
    expected = np.zeros((4, 4), dtype=bool)
    for r, c in [(1, 1), (1, 2), (2, 1), (3, 1), (1, 3)]:
        expected[r, c] = True
    np.testing.assert_array_equal(boundary_map(mask), expected)


def test_full_and_empty_masks_have_no_boundary():
    masks = np.stack([np.ones((5, 7), dtype=bool), np.zeros((5, 7), dtype=bool)])
    assert not boundary_map(masks).any()


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (1, 1), (2, 2), (13, 17)])
def test_boundary_map_matches_the_reference_per_frame(shape):
    rng = np.random.default_rng(sum(shape))
    masks = rng.random((6, *shape)) < 0.5
    got = boundary_map(masks)
    for t in range(len(masks)):
        np.testing.assert_array_equal(got[t], ref.seg2bmap(masks[t]))


# --------------------------------------------------------------------------------------------
# disk_dilation and the radius


@pytest.mark.parametrize("radius", range(11))
def test_disk_dilation_equals_binary_dilation_with_skimage_disk(radius):
    rng = np.random.default_rng(radius)
    masks = rng.random((3, 23, 31)) < 0.01
    masks[0, 0, 0] = masks[0, -1, -1] = masks[1, 0, -1] = masks[1, -1, 0] = True  # at the borders
    got = disk_dilation(masks, radius)
    for t in range(len(masks)):
        np.testing.assert_array_equal(got[t], ref.dilate(masks[t], radius))


def test_disk_dilation_of_one_pixel_is_the_disk():
    mask = np.zeros((21, 21), dtype=bool)
    mask[10, 10] = True
    got = disk_dilation(mask, 8)
    np.testing.assert_array_equal(got[2:19, 2:19], disk(8).astype(bool))
    assert got.sum() == disk(8).sum()


def test_boundary_radius():
    # sqrt(854^2 + 480^2) = 979.64..., * 0.008 = 7.84 -> 8 (the spec's "8 px at 854x480");
    # sqrt(2) * 100 * 0.008 = 1.13 -> 2.
    assert boundary_radius(480, 854) == 8
    assert boundary_radius(854, 480) == 8
    assert boundary_radius(100, 100) == 2
    assert boundary_radius(100, 100, bound_th=3) == 3  # >= 1: pixels, as in the toolkit
    with pytest.raises(ValueError, match="must be whole"):
        boundary_radius(100, 100, bound_th=1.5)
    with pytest.raises(ValueError, match="> 0"):
        boundary_radius(100, 100, bound_th=0)


# --------------------------------------------------------------------------------------------
# jaccard and f_measure on hand-made masks


def test_jaccard_of_two_overlapping_squares():
    # Two 4x4 squares overlapping in a 2x2 block: |P & G| = 4, |P | G| = 16 + 16 - 4 = 28.
    pred = _square((10, 10), 0, 0, 4)
    gt = _square((10, 10), 2, 2, 4)
    np.testing.assert_allclose(jaccard(pred[None], gt[None]), [4 / 28])


def test_identical_and_empty_cases():
    square = _square((12, 12), 3, 4, 5)
    empty = np.zeros((12, 12), dtype=bool)
    pred = np.stack([square, empty, empty, square])
    gt = np.stack([square, empty, square, empty])
    # same mask; both empty; empty prediction; empty ground truth
    np.testing.assert_array_equal(jaccard(pred, gt), [1, 1, 0, 0])
    # F: 1; both boundaries empty -> P = R = 1; empty pred -> P = 1, R = 0 -> F = 0;
    # empty gt -> P = 0, R = 1 -> F = 0.
    np.testing.assert_array_equal(f_measure(pred, gt), [1, 1, 0, 0])


def test_full_frame_masks_have_empty_boundaries_like_the_toolkit():
    # A mask filling the frame has no seg2bmap boundary, so full vs full is "both empty" (F = 1)
    # and full vs a square is "empty prediction boundary" (P = 1, R = 0, F = 0).
    full = np.ones((12, 12), dtype=bool)
    square = _square((12, 12), 3, 4, 5)
    np.testing.assert_array_equal(
        f_measure(np.stack([full, full]), np.stack([full, square])), [1, 0]
    )
    np.testing.assert_allclose(jaccard(full[None], square[None]), [25 / 144])


@pytest.mark.parametrize("dy,dx", [(0, 1), (0, 2), (2, 0), (1, 1), (-2, 0)])
def test_shift_within_the_tolerance_gives_f_1(dy, dx):
    # 100x100 frame -> radius 2 (see test_boundary_radius). Both boundaries are 80-pixel rings;
    # every pixel of a ring moved by at most (0, 2), (2, 0) or (1, 1) has its own twin within the
    # disk, so precision = recall = 1.
    gt = _square((100, 100), 40, 40, 20)
    pred = _shift(gt, dy, dx)
    np.testing.assert_array_equal(f_measure(pred[None], gt[None]), [1.0])


def test_shift_beyond_the_tolerance_counted_by_hand():
    # Side 20 square at rows/cols 40..59; its seg2bmap ring is the outline of rows/cols 39..59
    # (80 px). Shifted right by 3, the predicted ring is the outline of rows 39..59, columns
    # 42..62. With radius 2 a predicted pixel counts iff a true ring pixel is within distance 2:
    # - top and bottom rows, columns 42..62 (2 x 21 px): columns 42..61 are on the true rows or
    #   <= 2 past their end at column 59 (2 x 20 matched); column 62 is 3 away (not);
    # - left column 42, rows 40..58 (19 px): 3 from the true column 39; rows 40, 41, 57, 58 are
    #   <= 2 from the true top / bottom rows (4 matched), rows 42..56 are not;
    # - right column 62, rows 40..58 (19 px): 3 from column 59 and from the rows' ends (none).
    # Precision = (40 + 4) / 80. Mirroring the picture left-right swaps prediction and truth, so
    # recall is 44 / 80 as well, and F = 2PR / (P + R) = 44 / 80 = 0.55.
    gt = _square((100, 100), 40, 40, 20)
    pred = _shift(gt, 0, 3)
    np.testing.assert_allclose(f_measure(pred[None], gt[None]), [44 / 80])
    # J: overlap 20 x 17 = 340, union 400 + 400 - 340 = 460.
    np.testing.assert_allclose(jaccard(pred[None], gt[None]), [340 / 460])


def test_bad_stacks_are_rejected():
    with pytest.raises(InputError, match="T x H x W"):
        jaccard(np.zeros((4, 4), dtype=bool), np.zeros((4, 4), dtype=bool))
    with pytest.raises(InputError, match="ground truth has"):
        f_measure(np.zeros((1, 4, 4), dtype=bool), np.zeros((1, 4, 5), dtype=bool))


# --------------------------------------------------------------------------------------------
# evaluate_sequence


def test_first_and_last_frames_are_not_scored():
    rng = np.random.default_rng(0)
    gt = [np.zeros((20, 30), dtype=np.uint8) for _ in range(4)]
    for labels in gt:
        labels[2:9, 3:12] = 1
        labels[10:18, 15:27] = 2
    pred = [g.copy() for g in gt]
    pred[0] = rng.integers(0, 3, (20, 30), dtype=np.uint8)  # garbage with the real ids
    pred[-1] = rng.integers(0, 3, (20, 30), dtype=np.uint8)
    gt_messy = [g.copy() for g in gt]
    gt_messy[0] = rng.integers(0, 3, (20, 30), dtype=np.uint8)  # same ids, other pixels
    gt_messy[-1] = np.zeros((20, 30), dtype=np.uint8)
    for truth in (gt, gt_messy):
        scores = evaluate_sequence(pred, truth)
        assert scores.object_ids == (1, 2)
        assert scores.j == {1: 1.0, 2: 1.0}
        assert scores.f == {1: 1.0, 2: 1.0}
    # and the middle frames do count: spoil frame 1 of object 2 (empty prediction -> J = F = 0)
    pred[1][pred[1] == 2] = 0
    scores = evaluate_sequence(pred, gt)
    assert scores.j == {1: 1.0, 2: 0.5}
    assert scores.f == {1: 1.0, 2: 0.5}
    assert scores.j_mean == 0.75 and scores.f_mean == 0.75 and scores.j_and_f == 0.75


def test_objects_come_from_the_ground_truth_only():
    gt = [np.zeros((16, 16), dtype=np.uint8) for _ in range(3)]
    for labels in gt:
        labels[2:8, 2:8] = 1
    gt[0][10:14, 10:14] = 3  # object 3 is only in the (unscored) first frame: still an object
    pred = [g.copy() for g in gt]
    pred[1][10:14, 10:14] = 9  # id 9 is not in the ground truth: ignored
    scores = evaluate_sequence(pred, gt)
    assert scores.object_ids == (1, 3)
    # object 1 is perfect; object 3 is absent from both on the scored frame -> J = F = 1
    assert scores.j == {1: 1.0, 3: 1.0}
    assert scores.f == {1: 1.0, 3: 1.0}


def test_a_scoring_plan_scores_each_object_on_its_own_frames():
    gt = [np.zeros((16, 16), dtype=np.uint8) for _ in range(5)]
    for labels in gt:
        labels[2:8, 2:8] = 1
    for labels in gt[2:]:
        labels[10:14, 10:14] = 2  # object 2 enters on frame 2
    pred = [g.copy() for g in gt]
    pred[1][2:8, 2:8] = 0  # object 1 lost on frame 1
    pred[3][10:14, 10:14] = 0  # object 2 lost on frame 3
    scores = evaluate_sequence(pred, gt, scored_frames={1: [1, 2, 3], 2: [3]})
    assert scores.object_ids == (1, 2)
    assert scores.j == {1: pytest.approx(2 / 3), 2: 0.0}
    assert scores.f == {1: pytest.approx(2 / 3), 2: 0.0}
    # Without the plan object 2 is credited frames 1 (absent from both) and 2 (its seed).
    assert evaluate_sequence(pred, gt).j[2] == pytest.approx(2 / 3)
    # Only the objects the plan names are scored.
    assert evaluate_sequence(pred, gt, scored_frames={2: [2]}).object_ids == (2,)
    with pytest.raises(InputError, match="object 7, absent from the ground truth"):
        evaluate_sequence(pred, gt, scored_frames={7: [1]})
    with pytest.raises(InputError, match="gives object 1 no frame"):
        evaluate_sequence(pred, gt, scored_frames={1: []})
    with pytest.raises(InputError, match="frames 1..5, outside the 5 ground-truth frames"):
        evaluate_sequence(pred, gt, scored_frames={1: [1, 5]})
    with pytest.raises(InputError, match="names no object"):
        evaluate_sequence(pred, gt, scored_frames={})


def test_sequence_errors_name_the_problem():
    frame = np.zeros((8, 10), dtype=np.uint8)
    frame[2:5, 2:5] = 1
    with pytest.raises(ValueError, match="at least 3"):
        evaluate_sequence([frame, frame], [frame, frame])
    with pytest.raises(InputError, match="2 predicted frames but 3"):
        evaluate_sequence([frame, frame], [frame, frame, frame])
    narrow = frame[:, :9]
    with pytest.raises(
        InputError, match=r"clip frame 2: prediction is 9x8 but ground truth is 10x8"
    ):
        evaluate_sequence([frame, frame, narrow, frame], [frame] * 4, name="clip")
    with pytest.raises(InputError, match="holds no object"):
        evaluate_sequence([frame] * 3, [np.zeros_like(frame)] * 3)
    with pytest.raises(InputError, match="integer label map"):
        evaluate_sequence([frame.astype(float)] * 3, [frame] * 3)


def test_real_frames_of_different_sizes_are_rejected():
    # cutie-judo/00005.png ships 853 pixels wide while the other masks are 854 (SOURCES.md).
    gt = [
        _read_labels(ANNOTATIONS / "cutie-judo" / f"{n}.png") for n in ("00000", "00005", "00008")
    ]
    with pytest.raises(InputError, match=r"judo frame 1: frame is 853x480 but frame 0 is 854x480"):
        evaluate_sequence(gt, gt, name="judo")


# --------------------------------------------------------------------------------------------
# Dataset mean, summary and table


def _perfect_and_missed(n_objects: int, hit: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    gt = [np.zeros((12, 40), dtype=np.uint8) for _ in range(3)]
    for labels in gt:
        for k in range(1, n_objects + 1):
            labels[3:9, 10 * k - 8 : 10 * k - 2] = k
    pred = [g.copy() if hit else np.zeros_like(g) for g in gt]
    return pred, gt


def test_dataset_mean_is_over_objects_not_sequences():
    # "one": 1 object, perfect (J = F = 1). "three": 3 objects, nothing predicted (J = F = 0).
    # Over objects: (1 + 0 + 0 + 0) / 4 = 0.25. Over sequences it would be (1 + 0) / 2 = 0.5.
    inputs = {"one": _perfect_and_missed(1, hit=True), "three": _perfect_and_missed(3, hit=False)}
    scores = {name: evaluate_sequence(pred, gt) for name, (pred, gt) in inputs.items()}
    summary = summarize(scores)
    assert summary["sequences"] == {
        "one": {"J": 1.0, "F": 1.0, "J&F": 1.0},
        "three": {"J": 0.0, "F": 0.0, "J&F": 0.0},
    }
    assert summary["mean"] == {"J": 0.25, "F": 0.25, "J&F": 0.25}
    reference = ref.dataset_means({n: ref.evaluate_sequence(p, g) for n, (p, g) in inputs.items()})
    assert reference == (0.25, 0.25, 0.25)


def test_summary_and_table_content():
    scores = {
        "two-objects": SequenceScores((1, 2), {1: 0.5, 2: 0.3}, {1: 0.9, 2: 0.7}),
        "b": SequenceScores((4,), {4: 0.1}, {4: 0.2}),
    }
    summary = summarize(scores)
    # two-objects: J = 0.4, F = 0.8, J&F = 0.6; b: 0.1, 0.2, 0.15.
    # Dataset over the 3 objects: J = 0.9 / 3 = 0.3, F = 1.8 / 3 = 0.6, J&F = 0.45.
    assert summary["sequences"]["two-objects"] == pytest.approx({"J": 0.4, "F": 0.8, "J&F": 0.6})
    assert summary["sequences"]["b"] == pytest.approx({"J": 0.1, "F": 0.2, "J&F": 0.15})
    assert summary["mean"] == pytest.approx({"J": 0.3, "F": 0.6, "J&F": 0.45})

    lines = format_table(summary).splitlines()
    assert lines[0].split() == ["sequence", "J", "F", "J&F"]
    rows = [line.split() for line in lines if line and not line.startswith("-")][1:]
    assert rows == [
        ["two-objects", "40.0", "80.0", "60.0"],
        ["b", "10.0", "20.0", "15.0"],
        ["mean", "30.0", "60.0", "45.0"],
    ]
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert lines[-2].startswith("-")  # a rule above the mean row
    with_unscored = format_table(summary | {"unscored": {"judo": "seeds only"}}).splitlines()
    assert with_unscored == [*lines, "not scored: judo: seeds only"]


def test_sequence_scores_checks_its_keys():
    with pytest.raises(ValueError, match="exactly the keys"):
        SequenceScores((1, 2), {1: 0.5}, {1: 0.5, 2: 0.5})
    with pytest.raises(ValueError, match="at least one"):
        summarize({})


# --------------------------------------------------------------------------------------------
# Equality with the reference


def _assert_matches_reference(pred, gt, bound_th=0.008):
    """evaluate_sequence, jaccard and f_measure against the per-frame reference, to 1e-6."""
    expected = ref.evaluate_sequence(pred, gt, bound_th)
    scores = evaluate_sequence(pred, gt, bound_th=bound_th)
    assert scores.object_ids == tuple(expected)
    for k, per_frame in expected.items():
        pred_k = np.stack([p == k for p in pred[1:-1]])
        gt_k = np.stack([g == k for g in gt[1:-1]])
        np.testing.assert_allclose(jaccard(pred_k, gt_k), per_frame["J"], atol=1e-6)
        np.testing.assert_allclose(f_measure(pred_k, gt_k, bound_th), per_frame["F"], atol=1e-6)
        assert scores.j[k] == pytest.approx(np.mean(per_frame["J"]), abs=1e-6)
        assert scores.f[k] == pytest.approx(np.mean(per_frame["F"]), abs=1e-6)
    return scores


@pytest.mark.parametrize("bound_th", [0.008, 0.05, 4])
def test_random_blobs_match_the_reference(bound_th):
    rng = np.random.default_rng(7)
    # 11 frames -> 9 scored: not a multiple of 8, so the last packed byte is partly padding.
    gt = _blobs(rng, 11, (45, 70), 3)
    pred = _blobs(rng, 11, (45, 70), 4)  # id 4 exists only in the prediction
    gt[3][gt[3] == 2] = 0  # object 2 absent from one scored frame of the ground truth
    pred[5][:] = 1  # a frame where object 1 fills the prediction (no seg2bmap boundary)
    scores = _assert_matches_reference(pred, gt, bound_th)
    assert 0 < scores.j_mean < 1 and 0 < scores.f_mean < 1


def _eroded(labels: np.ndarray) -> np.ndarray:
    out = np.zeros_like(labels)
    for k in np.unique(labels[labels > 0]):
        out[ndimage.binary_erosion(labels == k, iterations=4)] = k
    return out


def _swapped(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    out[labels == 1], out[labels == 2] = 2, 1
    return out


@pytest.mark.parametrize(
    "perturb",
    [_eroded, lambda m: _shift(m, 6, -9)],
    ids=["eroded", "shifted"],
)
def test_real_single_object_sequence_matches_the_reference(perturb):
    # blackswan: DAVIS 2016 'L' masks, 854x480 -> radius 8; the first 6 frames (4 scored).
    gt = [_read_labels(ANNOTATIONS / "blackswan" / f"{i:05d}.png") for i in range(6)]
    pred = [perturb(g) for g in gt]
    scores = _assert_matches_reference(pred, gt)
    assert scores.object_ids == (1,)
    assert scores.j_mean < 1 and scores.f_mean < 1


@pytest.mark.parametrize(
    "perturb", [_eroded, lambda m: _shift(m, -5, 7), _swapped], ids=["eroded", "shifted", "swapped"]
)
def test_real_multi_object_sequence_matches_the_reference(perturb):
    # xmem2-caps: 2 objects (object 2 first appears in 00033), portrait 480x853, 5 masks -> 3
    # scored frames: 00014 (object 1 only), 00033 and 00043.
    names = ("00000", "00014", "00033", "00043", "00066")
    gt = [_read_labels(ANNOTATIONS / "xmem2-caps" / f"{n}.png") for n in names]
    pred = [perturb(g) for g in gt]
    scores = _assert_matches_reference(pred, gt)
    assert scores.object_ids == (1, 2)
    assert scores.j_mean < 1


def test_real_sequence_against_itself_scores_1():
    names = ("00000", "00014", "00033", "00043", "00066")
    gt = [_read_labels(ANNOTATIONS / "xmem2-caps" / f"{n}.png") for n in names]
    scores = evaluate_sequence(gt, gt)
    assert scores.j == {1: 1.0, 2: 1.0} and scores.f == {1: 1.0, 2: 1.0}
