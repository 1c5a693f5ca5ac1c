"""``select_training_data`` (pipeline.engine.selection) on hand-built MASKS and CORRECTIONS rows.

Masks are 4 x 6. Unless a test says otherwise, every object keeps the same mask on every frame
(IoU 1 with its neighbours) with score 0.95, above the default ``min_score`` of 0.85.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from pipeline.engine.selection import select_training_data
from pipeline.rle import encode
from schemas.nightly import SelectionConfig
from schemas.tables import CORRECTIONS, MASKS, SELECTION, CorrectionRow, MaskRow

H, W = 4, 6
T0 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
CONFIG = SelectionConfig()  # min_score 0.85, min_consistency 0.7


def box(top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top : top + height, left : left + width] = True
    return mask


ONE = box(0, 0, 2, 2)  # object 1's usual mask
TWO = box(2, 3, 2, 3)  # object 2's usual mask
EMPTY = np.zeros((H, W), bool)


def mask_row(
    frame: int,
    obj: int,
    mask: np.ndarray,
    score: float = 0.95,
    *,
    video: str = "v",
    is_seed: bool = False,
    run: str = "run-1",
) -> MaskRow:
    area = int(mask.sum())
    if area:
        rows, cols = np.nonzero(mask)
        bbox = (
            float(cols.min()),
            float(rows.min()),
            float(cols.max() - cols.min() + 1),
            float(rows.max() - rows.min() + 1),
        )
    else:
        bbox = (0.0, 0.0, 0.0, 0.0)
    return MaskRow(
        run_id=run,
        video_id=video,
        frame_index=frame,
        frame_name=f"{frame:05d}",
        object_id=obj,
        height=H,
        width=W,
        rle=encode(mask),
        area=area,
        bbox=bbox,
        score=1.0 if is_seed else (score if area else 0.0),
        is_seed=is_seed,
        checkpoint_id="sha256:" + "0" * 16,
    )


def steady(frames: int, video: str = "v") -> list[MaskRow]:
    """Objects 1 and 2, same masks on every frame, all confident."""
    return [mask_row(f, o, m, video=video) for f in range(frames) for o, m in ((1, ONE), (2, TWO))]


def replace(rows: list[MaskRow], new: MaskRow) -> list[MaskRow]:
    key = (new.video_id, new.frame_index, new.object_id)
    return [new if (r.video_id, r.frame_index, r.object_id) == key else r for r in rows]


def correction(frame: int, obj: int, mask: np.ndarray, video: str = "v") -> CorrectionRow:
    return CorrectionRow(
        video_id=video,
        frame_index=frame,
        object_id=obj,
        height=H,
        width=W,
        rle=encode(mask),
        author="alice",
        time=T0,
    )


def select(
    rows: list[MaskRow],
    corrections: list[CorrectionRow] | None = None,
    config: SelectionConfig = CONFIG,
) -> pa.Table:
    fixes = CORRECTIONS.table(corrections) if corrections else CORRECTIONS.empty()
    return select_training_data("night-1", MASKS.table(rows), fixes, config)


def frames_of(table: pa.Table, video: str = "v") -> list[int]:
    kept = {
        f
        for v, f in zip(
            table["video_id"].to_pylist(), table["frame_index"].to_pylist(), strict=True
        )
        if v == video
    }
    return sorted(kept)


def row_at(table: pa.Table, frame: int, obj: int, video: str = "v") -> dict:
    found = [
        r
        for r in table.to_pylist()
        if (r["video_id"], r["frame_index"], r["object_id"]) == (video, frame, obj)
    ]
    assert len(found) == 1, found
    return found[0]


def test_confident_consistent_frames_are_selected_as_pseudo_labels() -> None:
    table = select(steady(3))
    assert table.num_rows == 6
    assert frames_of(table) == [0, 1, 2]
    assert set(table["source"].to_pylist()) == {"pseudo"}
    assert set(table["run_id"].to_pylist()) == {"run-1"}
    assert table["consistency"].to_pylist() == [1.0] * 6
    assert table["score"].to_pylist() == pytest.approx([0.95] * 6)
    assert row_at(table, 1, 2)["rle"] == encode(TWO)


def test_one_low_score_object_drops_the_whole_frame() -> None:
    rows = replace(steady(3), mask_row(1, 2, TWO, score=0.5))
    table = select(rows)
    assert frames_of(table) == [0, 2]
    assert table.num_rows == 4  # both objects of frames 0 and 2; neither of frame 1


def test_score_exactly_min_score_passes() -> None:
    rows = replace(steady(3), mask_row(1, 2, TWO, score=0.75))
    assert frames_of(select(rows, config=SelectionConfig(min_score=0.75))) == [0, 1, 2]


def test_a_mask_inconsistent_with_its_neighbours_drops_its_frame_and_theirs() -> None:
    # frame 2's object 1 jumps to the other corner: IoU 0 with frames 1 and 3, so frames 1..3
    # (whose smaller neighbour IoU is that 0) go; frames 0 and 4 stay.
    rows = replace(steady(5), mask_row(2, 1, box(2, 4, 2, 2)))
    assert frames_of(select(rows)) == [0, 4]


def test_consistency_is_the_smaller_neighbour_iou_compared_with_min_consistency() -> None:
    # frame 1's object 1 covers half of ONE: IoU 0.5 with frames 0 and 2
    rows = replace(steady(3), mask_row(1, 1, box(0, 0, 1, 2)))
    assert frames_of(select(rows)) == []  # 0.5 < 0.7 everywhere for object 1
    table = select(rows, config=SelectionConfig(min_consistency=0.5))
    assert frames_of(table) == [0, 1, 2]
    assert row_at(table, 1, 1)["consistency"] == pytest.approx(0.5)
    assert row_at(table, 1, 2)["consistency"] == 1.0


def test_an_empty_mask_with_empty_neighbours_passes() -> None:
    rows = [mask_row(f, o, m) for f in range(3) for o, m in ((1, ONE), (2, EMPTY))]
    table = select(rows)
    assert frames_of(table) == [0, 1, 2]
    absent = row_at(table, 1, 2)
    assert absent["score"] == 0.0  # empty masks score 0, yet pass: the object is absent
    assert absent["consistency"] == 1.0


def test_an_empty_mask_between_non_empty_ones_fails() -> None:
    rows = replace(steady(3), mask_row(1, 2, EMPTY))
    assert frames_of(select(rows)) == []  # frame 1 empty, frames 0 and 2 have IoU 0 with it


def test_a_single_frame_track_has_no_consistency_and_is_not_pseudo_labelled() -> None:
    assert frames_of(select([mask_row(0, 1, ONE)])) == []


def test_seed_frames_are_always_kept_with_score_and_consistency_one() -> None:
    # every pseudo-label is unsure; frame 0 holds object 1's seed, which also differs from
    # object 1's later masks (its raw consistency would be 0)
    rows = [mask_row(f, o, m, score=0.2) for f in range(3) for o, m in ((1, TWO), (2, ONE))]
    rows = replace(rows, mask_row(0, 1, box(0, 4, 2, 2), is_seed=True))
    table = select(rows)
    assert frames_of(table) == [0]
    seed = row_at(table, 0, 1)
    assert (seed["source"], seed["score"], seed["consistency"]) == ("seed", 1.0, 1.0)
    assert seed["run_id"] == "run-1"
    assert seed["rle"] == encode(box(0, 4, 2, 2))
    other = row_at(table, 0, 2)  # the other object on the seed frame comes along as a pseudo row
    assert other["source"] == "pseudo"
    assert other["score"] == pytest.approx(0.2)


def test_a_correction_replaces_the_labeled_mask_and_anchors_its_frame() -> None:
    fixed = box(1, 1, 2, 3)  # IoU 1/9 with ONE
    rows = replace(steady(3), mask_row(1, 2, TWO, score=0.1))  # frame 1 would be dropped
    table = select(rows, [correction(1, 1, fixed)])
    # frame 1 is anchored; frames 0 and 2 now disagree with the corrected mask and go
    assert frames_of(table) == [1]
    row = row_at(table, 1, 1)
    assert row["source"] == "correction"
    assert row["rle"] == encode(fixed)
    assert row["run_id"] is None
    assert (row["score"], row["consistency"]) == (1.0, 1.0)
    assert row_at(table, 1, 2)["source"] == "pseudo"  # the uncorrected object keeps its label
    assert table.num_rows == 2  # replaced, not added


def test_a_correction_of_an_unlabeled_frame_or_video_is_ignored() -> None:
    table = select(steady(2), [correction(7, 1, ONE), correction(0, 1, ONE, video="other")])
    assert frames_of(table) == [0, 1]
    assert set(table["source"].to_pylist()) == {"pseudo"}
    assert set(table["video_id"].to_pylist()) == {"v"}


def test_without_pseudo_labels_only_seed_and_correction_frames_are_kept() -> None:
    rows = replace(steady(5), mask_row(0, 1, ONE, is_seed=True))
    table = select(rows, [correction(3, 2, TWO)], SelectionConfig(pseudo_labels=False))
    assert frames_of(table) == [0, 3]
    assert row_at(table, 0, 1)["source"] == "seed"
    assert row_at(table, 3, 2)["source"] == "correction"


def test_max_frames_per_video_spreads_the_picks_evenly_keeping_first_and_last() -> None:
    table = select(steady(10), config=SelectionConfig(max_frames_per_video=4))
    assert frames_of(table) == [0, 3, 6, 9]
    assert frames_of(select(steady(10), config=SelectionConfig(max_frames_per_video=10))) == list(
        range(10)
    )


def test_max_frames_per_video_never_drops_a_seed_or_correction_frame() -> None:
    table = select(steady(10), [correction(2, 1, ONE)], SelectionConfig(max_frames_per_video=4))
    assert frames_of(table) == [0, 2, 6, 9]  # 2 takes the place of its nearest pick, 3
    assert row_at(table, 2, 1)["source"] == "correction"


def test_max_frames_per_video_applies_per_video() -> None:
    rows = steady(6, "a") + steady(3, "b")
    table = select(rows, config=SelectionConfig(max_frames_per_video=3))
    picked = frames_of(table, "a")
    assert (len(picked), picked[0], picked[-1]) == (3, 0, 5)
    assert frames_of(table, "b") == [0, 1, 2]


def test_output_matches_the_selection_schema_and_is_sorted() -> None:
    rows = steady(3, "b") + steady(2, "a")
    rows = rows[::-1]  # masks arrive in no particular order
    table = select(rows)
    assert table.schema.equals(SELECTION.schema, check_metadata=True)
    SELECTION.check(table)
    keys = list(
        zip(
            table["video_id"].to_pylist(),
            table["frame_index"].to_pylist(),
            table["object_id"].to_pylist(),
            strict=True,
        )
    )
    assert keys == sorted(keys)
    assert len(keys) == 10
    assert set(table["selection_id"].to_pylist()) == {"night-1"}


def test_no_masks_give_an_empty_selection() -> None:
    table = select_training_data("night-1", MASKS.empty(), CORRECTIONS.empty(), CONFIG)
    assert table.num_rows == 0
    assert table.schema.equals(SELECTION.schema)
