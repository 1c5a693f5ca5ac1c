"""Human corrections: the corrections table (pipeline.engine.corrections), how corrections
become seeds (pipeline.corpus.apply_corrections), and ``add_correction`` against a
committed labeling run written in ``tmp_path`` with :mod:`pipeline.ledger`."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import ledger
from pipeline.corpus import RleSeed, apply_corrections
from pipeline.engine.corrections import (
    add_correction,
    correction_rows,
    corrections_by_video,
    latest_correction_time,
    read_corrections,
    write_corrections,
)
from pipeline.rle import decode, encode, encode_label_map
from schemas.tables import CORRECTIONS, ERRORS, MASKS, MaskRow
from stm_core.errors import InputError
from stm_core.io import write_mask

T0 = dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.UTC)
H, W = 8, 10


def label_map(**boxes: tuple[int, int, int, int]) -> np.ndarray:
    """``o1=(top, left, height, width), ...`` -> an H x W label map."""
    labels = np.zeros((H, W), np.uint8)
    for name, (top, left, height, width) in boxes.items():
        labels[top : top + height, left : left + width] = int(name[1:])
    return labels


def png_bytes(labels: np.ndarray, tmp_path: Path, name: str = "fix.png") -> bytes:
    path = tmp_path / "pngs" / name
    write_mask(path, labels)
    return path.read_bytes()


# --- the corrections table ------------------------------------------------------------------


def test_correction_rows_has_one_row_per_object_and_empty_masks_for_absent_ones() -> None:
    labels = label_map(o1=(0, 0, 2, 3))
    rows = correction_rows("v", 4, labels, [2, 1, 1], "alice", T0)
    assert [(r.video_id, r.frame_index, r.object_id) for r in rows] == [("v", 4, 1), ("v", 4, 2)]
    assert all((r.height, r.width, r.author, r.time) == (H, W, "alice", T0) for r in rows)
    assert decode(rows[0].rle, H, W).sum() == 6
    assert np.array_equal(decode(rows[0].rle, H, W), labels == 1)
    assert decode(rows[1].rle, H, W).sum() == 0  # object 2 is absent: an empty mask
    assert rows[1].rle == encode(np.zeros((H, W), bool))


def test_write_corrections_dedupes_identical_content(tmp_path: Path) -> None:
    folder = str(tmp_path / "corrections")
    rows = correction_rows("v", 1, label_map(o1=(0, 0, 2, 2)), [1], "alice", T0)
    uri = write_corrections(folder, rows, None)
    assert uri is not None and uri.startswith(folder + "/") and Path(uri).is_file()
    later = correction_rows("v", 1, label_map(o1=(0, 0, 2, 2)), [1], "alice", T0.replace(hour=9))
    assert write_corrections(folder, later, None) is None  # same masks, same author
    other = correction_rows("v", 1, label_map(o1=(0, 0, 3, 3)), [1], "alice", T0)
    assert write_corrections(folder, other, None) not in (None, uri)
    assert len(list(Path(folder).glob("*.parquet"))) == 2


def test_write_corrections_refuses_an_empty_set(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no corrections"):
        write_corrections(str(tmp_path / "corrections"), [], None)


def test_read_corrections_keeps_the_newest_per_frame_and_object(tmp_path: Path) -> None:
    folder = str(tmp_path / "corrections")
    assert read_corrections(folder, None).num_rows == 0
    old = label_map(o1=(0, 0, 2, 2), o2=(4, 4, 2, 2))
    new = label_map(o1=(1, 1, 3, 3))
    late = T0 + dt.timedelta(hours=1)
    write_corrections(folder, correction_rows("v", 1, new, [1], "bob", late), None)  # newer first
    write_corrections(folder, correction_rows("v", 1, old, [1, 2], "alice", T0), None)
    write_corrections(folder, correction_rows("w", 0, old, [1], "alice", T0), None)
    table = read_corrections(folder, None)
    assert table.schema.equals(CORRECTIONS.schema)
    rows = table.to_pylist()
    assert [(r["video_id"], r["frame_index"], r["object_id"]) for r in rows] == [
        ("v", 1, 1),
        ("v", 1, 2),
        ("w", 0, 1),
    ]
    assert (rows[0]["author"], rows[0]["rle"]) == ("bob", encode(new == 1))
    assert (rows[1]["author"], rows[1]["rle"]) == ("alice", encode(old == 2))
    assert latest_correction_time(table) == {"v": late, "w": T0}


def test_corrections_by_video_groups_rle_seeds(tmp_path: Path) -> None:
    folder = str(tmp_path / "corrections")
    labels = label_map(o1=(0, 0, 2, 2))
    write_corrections(folder, correction_rows("v", 2, labels, [1, 2], "alice", T0), None)
    write_corrections(folder, correction_rows("w", 0, labels, [1], "alice", T0), None)
    grouped = corrections_by_video(read_corrections(folder, None))
    assert sorted(grouped) == ["v", "w"]
    assert grouped["v"] == (
        RleSeed(2, 1, H, W, encode(labels == 1)),
        RleSeed(2, 2, H, W, encode(labels == 2)),
    )
    assert grouped["w"] == (RleSeed(0, 1, H, W, encode(labels == 1)),)


# --- apply_corrections ----------------------------------------------------------------------


def seed(frame: int, obj: int, mask: np.ndarray) -> RleSeed:
    return RleSeed(frame, obj, H, W, encode(mask))


def test_a_correction_is_painted_over_other_objects_and_replaces_its_old_pixels() -> None:
    seeds = {0: label_map(o1=(0, 0, 4, 4), o2=(4, 4, 4, 4))}
    fixed = label_map(o2=(2, 2, 4, 4)) == 2  # overlaps object 1's corner, leaves (6..7, 6..7)
    out = apply_corrections(seeds, [seed(0, 2, fixed)], (H, W), 5, "corrections/x", "v")
    expected = label_map(o1=(0, 0, 4, 4))
    expected[fixed] = 2
    assert np.array_equal(out[0], expected)
    assert np.array_equal(seeds[0], label_map(o1=(0, 0, 4, 4), o2=(4, 4, 4, 4)))  # not mutated


def test_a_correction_of_an_unseeded_frame_adds_a_seed_frame() -> None:
    seeds = {0: label_map(o1=(0, 0, 2, 2))}
    fixed = label_map(o1=(3, 3, 2, 2)) == 1
    out = apply_corrections(seeds, [seed(3, 1, fixed)], (H, W), 5, "corrections/x", "v")
    assert sorted(out) == [0, 3]
    assert np.array_equal(out[3], fixed.astype(np.uint8))
    assert np.array_equal(out[0], seeds[0])


def test_an_empty_correction_removes_the_object_from_a_seed_frame() -> None:
    seeds = {0: label_map(o1=(0, 0, 2, 2), o2=(4, 4, 2, 2))}
    empty = np.zeros((H, W), bool)
    out = apply_corrections(seeds, [seed(0, 1, empty), seed(2, 1, empty)], (H, W), 5, "c", "v")
    assert sorted(out) == [0, 2]  # every corrected frame gets a seed, here an empty one
    assert not out[2].any()
    assert np.array_equal(out[0], label_map(o2=(4, 4, 2, 2)))


def test_a_frame_is_completely_corrected_when_every_object_is() -> None:
    from pipeline.corpus import complete_correction_frames

    empty = np.zeros((H, W), bool)
    fixes = [seed(2, 1, empty), seed(2, 2, empty), seed(4, 1, empty)]
    assert complete_correction_frames(fixes, [1, 2]) == {2}
    assert complete_correction_frames(fixes, [1]) == {2, 4}
    assert complete_correction_frames(fixes, []) == set()


def test_a_correction_of_another_size_is_an_input_error_naming_the_source() -> None:
    wrong = RleSeed(0, 1, W, H, encode(np.zeros((W, H), bool)))
    with pytest.raises(InputError, match="10x8") as info:
        apply_corrections({}, [wrong], (H, W), 5, "corrections/abc.parquet", "v")
    assert info.value.source.startswith("corrections/abc.parquet")
    assert "8x10" in str(info.value)


@pytest.mark.parametrize("frame", [-1, 5])
def test_a_correction_outside_the_video_is_an_input_error_naming_the_source(frame: int) -> None:
    with pytest.raises(InputError, match="outside") as info:
        apply_corrections(
            {}, [seed(frame, 1, label_map() == 0)], (H, W), 5, "corrections/abc.parquet", "v"
        )
    assert info.value.source.startswith("corrections/abc.parquet")
    assert f"frame {frame}" in info.value.source


# --- add_correction against a committed run -------------------------------------------------

# the labeled run: video "v", frames 0..2, object 1 top-left, object 2 bottom-right
LABELED = label_map(o1=(0, 0, 3, 3), o2=(5, 6, 3, 4))


@pytest.fixture()
def run_uri(tmp_path: Path) -> str:
    store, run_id = str(tmp_path / "store"), "label-1"
    plan = ledger.save_plan(store, ledger.make_plan(run_id, ["v"], 4))
    encoded = encode_label_map(LABELED, [1, 2])
    rows = [
        MaskRow(
            run_id=run_id,
            video_id="v",
            frame_index=f,
            frame_name=f"{f:05d}",
            object_id=m.object_id,
            height=H,
            width=W,
            rle=m.rle,
            area=m.area,
            bbox=m.bbox,
            score=1.0 if f == 0 else 0.9,
            is_seed=f == 0,
            checkpoint_id="sha256:" + "0" * 16,
        )
        for f in range(3)
        for m in encoded
    ]
    ledger.write_shard(store, run_id, plan.shards[0].name, MASKS.table(rows), ERRORS.empty())
    ledger.write_run_record(store, run_id, {"checkpoint_id": "sha256:" + "0" * 16})
    ledger.mark_success(store, run_id)
    return f"{store}/runs/{run_id}"


def stored_corrections(run_uri: str) -> list[dict]:
    store = run_uri.rsplit("/runs/", 1)[0]
    return read_corrections(f"{store}/corrections", None).to_pylist()


def test_a_full_frame_label_map_gives_one_row_per_known_object(
    run_uri: str, tmp_path: Path
) -> None:
    fixed = label_map(o1=(1, 1, 4, 4))  # object 2 erased on this frame
    uri, rows = add_correction(run_uri, "v", 1, png_bytes(fixed, tmp_path), "fix.png", "alice")
    assert uri is not None and uri.startswith(run_uri.rsplit("/runs/", 1)[0] + "/corrections/")
    assert [(r.frame_index, r.object_id) for r in rows] == [(1, 1), (1, 2)]
    stored = stored_corrections(run_uri)
    assert [(r["video_id"], r["frame_index"], r["object_id"]) for r in stored] == [
        ("v", 1, 1),
        ("v", 1, 2),
    ]
    assert np.array_equal(decode(stored[0]["rle"], H, W), fixed == 1)
    assert decode(stored[1]["rle"], H, W).sum() == 0
    assert {r["author"] for r in stored} == {"alice"}
    again = add_correction(run_uri, "v", 1, png_bytes(fixed, tmp_path), "fix.png", "alice")
    assert again[0] is None  # the same correction twice is stored once


def test_one_object_from_a_binary_png(run_uri: str, tmp_path: Path) -> None:
    binary = np.where(label_map(o1=(2, 2, 3, 3)) > 0, 255, 0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(binary, mode="L").save(buffer, format="PNG")
    _, rows = add_correction(run_uri, "v", 2, buffer.getvalue(), "obj2.png", "bob", object_id=2)
    assert [(r.frame_index, r.object_id) for r in rows] == [(2, 2)]
    assert np.array_equal(decode(rows[0].rle, H, W), binary > 0)
    assert [r["object_id"] for r in stored_corrections(run_uri)] == [2]


def test_one_object_from_a_label_map_takes_its_pixels(run_uri: str, tmp_path: Path) -> None:
    labels = label_map(o1=(0, 0, 2, 2), o2=(4, 4, 3, 3))
    _, rows = add_correction(run_uri, "v", 0, png_bytes(labels, tmp_path), "m.png", "bob", 2, None)
    assert [r.object_id for r in rows] == [2]
    assert np.array_equal(decode(rows[0].rle, H, W), labels == 2)


def test_a_mask_of_another_size_is_an_input_error_with_both_sizes(
    run_uri: str, tmp_path: Path
) -> None:
    wrong = np.zeros((W, H), np.uint8)  # 8 wide, 10 high
    wrong[0, 0] = 1
    with pytest.raises(InputError) as info:
        add_correction(run_uri, "v", 1, png_bytes(wrong, tmp_path), "big.png", "alice")
    assert info.value.source == "big.png"
    assert "8x10" in info.value.problem and "10x8" in info.value.problem
    assert stored_corrections(run_uri) == []


def test_an_unknown_object_id_is_an_input_error(run_uri: str, tmp_path: Path) -> None:
    labels = label_map(o1=(0, 0, 2, 2))
    with pytest.raises(InputError, match="object 5") as info:
        add_correction(run_uri, "v", 1, png_bytes(labels, tmp_path), "m.png", "a", object_id=5)
    assert info.value.source == "m.png"
    with pytest.raises(InputError, match=r"\[3\]") as info:
        add_correction(
            run_uri, "v", 1, png_bytes(label_map(o3=(0, 0, 2, 2)), tmp_path), "n.png", "a"
        )
    assert info.value.source == "n.png"
    assert stored_corrections(run_uri) == []


def test_a_frame_the_run_did_not_label_is_an_input_error(run_uri: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="frame 7") as info:
        add_correction(run_uri, "v", 7, png_bytes(LABELED, tmp_path), "m.png", "alice")
    assert info.value.source == "m.png"


def test_a_video_the_run_did_not_plan_is_an_input_error(run_uri: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope"):
        add_correction(run_uri, "nope", 0, png_bytes(LABELED, tmp_path), "m.png", "alice")


def test_the_correct_command_stores_a_correction_and_refuses_bad_input(
    run_uri: str, tmp_path: Path, capsys
) -> None:
    from jobs.cli import main

    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(label_map(o1=(0, 0, 3, 3)), tmp_path, "g.png"))
    args = ["correct", "--run", run_uri, "--video", "v", "--frame", "1", "--author", "ann"]
    assert main([*args, "--mask", str(good)]) == 0
    assert "stored 2 correction(s)" in capsys.readouterr().out
    assert [r["author"] for r in stored_corrections(run_uri)] == ["ann", "ann"]
    assert main([*args, "--mask", str(good)]) == 0  # the same again: nothing new
    assert "stored already" in capsys.readouterr().out
    assert main([*args, "--mask", str(good), "--object", "7"]) == 2
    err = capsys.readouterr().err
    assert "good.png" in err and "object 7 is unknown" in err
    assert main([*args, "--mask", str(tmp_path / "missing.png")]) == 2
    assert "mask file not found" in capsys.readouterr().err
