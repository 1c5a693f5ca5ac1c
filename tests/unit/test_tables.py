"""Table contracts (schemas.tables), mask RLE (pipeline.rle), atomic local IO (pipeline.table_io)
and the run ledger (pipeline.ledger) on a local folder. No Ray, no S3: see
tests/integration/test_table_io_s3.py for object storage."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ledger, rle, table_io
from schemas.common import StorageOptions
from schemas.tables import (
    CORRECTIONS,
    ERRORS,
    MASKS,
    SEEDS,
    TABLES,
    ErrorRow,
    MaskRow,
    RunPlan,
    TableError,
)

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def naive_runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a mask read column-major, background first (an independent reference:
    plain numpy, no pycocotools)."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size])))
    return np.concatenate(([0], runs)) if flat[0] else runs


def numpy_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    x, y = cols.min(), rows.min()
    return (float(x), float(y), float(cols.max() - x + 1), float(rows.max() - y + 1))


def mask_row(video: str = "v", frame: int = 0, obj: int = 1, run: str = "run-a") -> MaskRow:
    empty = rle.encode(np.zeros((4, 6), bool))
    return MaskRow(
        run, video, frame, f"{frame:05d}", obj, 4, 6, empty, 0, (0, 0, 0, 0), 0.0, False, "ckpt-1"
    )


def error_row(video: str | None = "v", run: str = "run-a", stage: str = "read") -> ErrorRow:
    return ErrorRow(run, video, stage, "InputError", "broken", T0)


# --- RLE ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (13, 17), (48, 64)])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 1.0])
def test_rle_round_trip_and_runs(shape: tuple[int, int], density: float) -> None:
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    mask = rng.random(shape) < density
    encoded = rle.encode(mask)
    assert isinstance(encoded, bytes)
    np.testing.assert_array_equal(rle.decode(encoded, *shape), mask)
    np.testing.assert_array_equal(rle.rle_counts(encoded), naive_runs(mask))


def test_rle_of_an_empty_mask() -> None:
    mask = np.zeros((5, 7), bool)
    encoded = rle.encode(mask)
    assert not rle.decode(encoded, 5, 7).any()
    (only,) = rle.encode_label_map(np.zeros((5, 7), np.uint8), [3])
    assert (only.object_id, only.area, only.bbox) == (3, 0, (0.0, 0.0, 0.0, 0.0))
    assert only.rle == encoded


def test_encode_treats_nonzero_as_foreground() -> None:
    mask = np.zeros((6, 5), np.uint8)
    mask[1:4, 2:4] = 255  # an 'L' PNG mask
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), 6, 5), mask > 0)


def test_label_map_area_and_bbox_match_numpy() -> None:
    rng = np.random.default_rng(1)
    labels = np.zeros((40, 52), np.uint8)
    labels[5:17, 30:49] = 2
    labels[20:38, 3:9] = 5
    labels[rng.random(labels.shape) < 0.02] = 7  # scattered pixels
    ids = [5, 2, 9, 7]  # 9 is absent; order must be kept
    encoded = rle.encode_label_map(labels, ids)
    assert [e.object_id for e in encoded] == ids
    for e in encoded:
        mask = labels == e.object_id
        assert e.area == int(mask.sum())
        assert e.bbox == numpy_bbox(mask)
        assert e.rle == rle.encode(mask)
        np.testing.assert_array_equal(rle.decode(e.rle, *labels.shape), mask)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rle.encode(np.zeros((2, 3, 1), bool)), "2-D"),
        (lambda: rle.encode(np.zeros((0, 3), bool)), "positive"),
        (lambda: rle.encode_label_map(np.zeros((4, 4), np.float32), [1]), "integers"),
        (lambda: rle.encode_label_map(np.zeros((4, 4), np.uint8), [1, 1]), "distinct"),
        (lambda: rle.decode(rle.encode(np.ones((4, 4), bool)), 4, 5), "16 pixels"),
        (lambda: rle.decode(b"", 4, 4), "empty"),
        (lambda: rle.decode(b"!!", 4, 4), "alphabet"),
        (lambda: rle.decode(b"0\\", 4, 4), "truncated"),
    ],
)
def test_rle_rejects_bad_input(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_decode_refuses_counts_of_a_smaller_mask() -> None:
    """pycocotools would fill the missing pixels with uninitialised memory."""
    small = rle.encode(np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="covers 9 pixels"):
        rle.decode(small, 10, 10)


def test_decode_does_not_warn() -> None:
    """pycocotools' decode warns under numpy 2.4; rle.decode must silence it itself (the
    project's pytest config also ignores it, which would hide a missing local filter)."""
    encoded = rle.encode(np.eye(4, dtype=bool))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rle.decode(encoded, 4, 4).sum() == 4


def test_encode_label_map_without_objects() -> None:
    assert rle.encode_label_map(np.zeros((3, 3), np.int32), []) == []


# --- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", list(TABLES.values()), ids=list(TABLES))
def test_row_types_document_every_column(spec) -> None:
    assert [f.name for f in dataclasses.fields(spec.row_type)] == spec.schema.names
    assert all(f.metadata and f.metadata[b"description"] for f in spec.schema)
    assert spec.schema.metadata[b"stm_label.table"] == spec.name.encode()
    assert set(spec.sort_keys) <= set(spec.schema.names)


def test_masks_schema_types() -> None:
    """The contract the brief fixed; a change here breaks every reader of old runs."""
    types = {f.name: f.type for f in MASKS.schema}
    assert types["frame_index"] == pa.int32() and types["object_id"] == pa.int32()
    assert types["rle"] == pa.binary() and types["area"] == pa.int64()
    assert types["bbox"] == pa.list_(pa.float32(), 4) and types["score"] == pa.float32()
    assert ERRORS.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert ERRORS.schema.field("video_id").nullable
    assert not ERRORS.schema.field("run_id").nullable
    assert SEEDS.schema.names == ["video_id", "frame_index", "object_id", "height", "width", "rle"]
    assert CORRECTIONS.schema.names[-2:] == ["author", "time"]


def test_tables_from_rows_round_trip() -> None:
    rows = [mask_row(obj=2), mask_row(frame=3)]
    table = MASKS.table(rows)
    assert table.schema.equals(MASKS.schema)
    assert table.to_pylist()[1]["frame_index"] == 3
    assert table.to_pylist()[0]["bbox"] == [0.0, 0.0, 0.0, 0.0]
    errors = ERRORS.table([error_row(None)])
    assert errors.column("video_id").null_count == 1
    assert ERRORS.empty().num_rows == 0 and ERRORS.empty().schema.equals(ERRORS.schema)
    with pytest.raises(TypeError, match="MaskRow"):
        MASKS.table([error_row()])


def test_check_names_a_missing_column() -> None:
    table = MASKS.table([mask_row()]).drop_columns(["score", "rle"])
    with pytest.raises(TableError, match=r"shard-3\.parquet: .*missing column\(s\) 'rle'.*'score'"):
        MASKS.check(table, "shard-3.parquet")


def test_check_names_a_mistyped_column() -> None:
    table = MASKS.table([mask_row()])
    table = table.set_column(7, "rle", pa.array(["60"], pa.string()))
    with pytest.raises(TableError, match="column 'rle' has type string, expected binary"):
        MASKS.check(table, "x.parquet")


def test_check_casts_safely_when_asked() -> None:
    """A user's seed table written by pandas/Polars: int64 ids, large strings, list<double>."""
    user = pa.table(
        {
            "video_id": pa.array(["b", "a"], pa.large_string()),
            "frame_index": pa.array([0, 4], pa.int64()),
            "object_id": pa.array([1, 2], pa.int64()),
            "height": pa.array([4, 4], pa.int64()),
            "width": pa.array([6, 6], pa.int64()),
            "rle": pa.array([b"60", b"60"], pa.large_binary()),
        }
    )
    with pytest.raises(TableError, match="column 'video_id' has type large_string"):
        SEEDS.check(user, "seeds.parquet")
    checked = SEEDS.check(user, "seeds.parquet", cast=True)
    assert checked.schema.equals(SEEDS.schema)
    assert checked.column("frame_index").to_pylist() == [0, 4]

    too_big = user.set_column(1, "frame_index", pa.array([0, 2**40], pa.int64()))
    with pytest.raises(TableError, match="column 'frame_index' .* cannot be converted"):
        SEEDS.check(too_big, "seeds.parquet", cast=True)

    boxes = MASKS.table([mask_row()]).set_column(
        9, "bbox", pa.array([[1.0, 2.0, 3.0, 4.0]], pa.list_(pa.float64()))
    )
    assert MASKS.check(boxes, cast=True).column("bbox").to_pylist() == [[1.0, 2.0, 3.0, 4.0]]


def test_check_rejects_nulls_extra_columns_and_unknown_stages() -> None:
    table = MASKS.table([mask_row(), mask_row(obj=2)])
    nulls = table.set_column(1, pa.field("video_id", pa.string()), pa.array(["v", None]))
    with pytest.raises(TableError, match="column 'video_id' has 1 null value.*row 1"):
        MASKS.check(nulls, "m.parquet")

    extra = table.append_column("note", pa.array(["x", "y"]))
    with pytest.raises(TableError, match=r"unknown column\(s\) \['note'\]"):
        MASKS.check(extra, "m.parquet")
    assert MASKS.check(extra, extra_columns="drop").schema.names == MASKS.schema.names

    reordered = table.select(list(reversed(table.schema.names)))
    assert MASKS.check(reordered).schema.names == MASKS.schema.names

    bad_stage = ERRORS.table([error_row()]).set_column(2, "stage", pa.array(["upload"]))
    with pytest.raises(TableError, match="column 'stage' has value 'upload'"):
        ERRORS.check(bad_stage, "e.parquet")


def test_masks_sort_order() -> None:
    rnd = random.Random(3)
    keys = [(rnd.choice("abc"), rnd.randrange(5), rnd.randrange(1, 4)) for _ in range(40)]
    table = MASKS.table(mask_row(video=v, frame=f, obj=o) for v, f, o in keys)
    got = MASKS.sort(table).select(["video_id", "frame_index", "object_id"]).to_pylist()
    assert [tuple(r.values()) for r in got] == sorted(keys)


# --- plan and names -------------------------------------------------------------------------


def test_shard_names() -> None:
    assert ledger.shard_name(7) == "shard-00007"
    assert ledger.shard_name(0) == "shard-00000"
    names = [ledger.shard_name(i) for i in (10, 9, 100, 2)]
    assert sorted(names) == [ledger.shard_name(i) for i in (2, 9, 10, 100)]
    with pytest.raises(ValueError):
        ledger.shard_name(-1)


def test_plan_is_deterministic_and_contiguous() -> None:
    ids = [f"video-{i:03d}" for i in range(23)]
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    plan = ledger.plan_shards(shuffled, 5)
    assert plan == ledger.plan_shards(reversed(ids), 5)
    assert [len(s) for s in plan] == [5, 5, 5, 5, 3]
    assert [v for s in plan for v in s] == sorted(ids)
    assert ledger.plan_shards([], 5) == []
    with pytest.raises(ValueError, match="duplicate video ids: \\['video-001'\\]"):
        ledger.plan_shards(ids + ["video-001"], 5)
    with pytest.raises(ValueError, match="videos_per_shard"):
        ledger.plan_shards(ids, 0)


def test_run_plan_model() -> None:
    plan = ledger.make_plan("run-a", ["c", "a", "b"], 2, created_at=T0)
    assert plan.shard_names == ["shard-00000", "shard-00001"]
    assert plan.video_ids == ["a", "b", "c"]
    assert RunPlan.model_validate_json(plan.model_dump_json()) == plan
    raw = plan.model_dump()
    raw["shards"][1]["video_ids"] = ["a"]
    with pytest.raises(ValueError, match="planned twice"):
        RunPlan.model_validate(raw)


@pytest.mark.parametrize("run_id", ["", "-x", "a/b", "run_id=3", "a b", "x" * 129])
def test_bad_run_ids(run_id: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        ledger.RunLayout("out", run_id)


def test_layout() -> None:
    layout = ledger.RunLayout("s3://bkt/out/", "r1")
    assert layout.masks_file("shard-00002") == "s3://bkt/out/masks/run_id=r1/shard-00002.parquet"
    assert layout.errors_file("shard-00002") == "s3://bkt/out/errors/run_id=r1/shard-00002.parquet"
    assert layout.plan_uri == "s3://bkt/out/runs/r1/plan.json"
    assert layout.record_uri == "s3://bkt/out/runs/r1.json"
    assert layout.success_uri == "s3://bkt/out/runs/r1/_SUCCESS"
    with pytest.raises(ValueError, match="shard name"):
        layout.masks_file("../x")


# --- atomic local IO ------------------------------------------------------------------------


def test_local_write_is_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    table = MASKS.table([mask_row(obj=i) for i in range(1, 4)])
    target = tmp_path / "deep" / "er" / "t.parquet"
    size = table_io.write_table(table, str(target))
    assert os.listdir(target.parent) == ["t.parquet"]
    assert size == target.stat().st_size
    back = table_io.read_table(str(target))
    assert back.equals(table) and back.schema.metadata == MASKS.schema.metadata
    assert pq.ParquetFile(target).metadata.row_group(0).column(0).compression == "ZSTD"
    assert table_io.read_table(f"file://{target}").equals(table)


def test_failed_local_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    table = MASKS.table([mask_row()])
    target = tmp_path / "t.parquet"

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(table_io.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        table_io.write_table(table, str(target))
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "t.parquet"
    old = MASKS.table([mask_row()])
    table_io.write_table(old, str(target))

    def partial_then_crash(table, sink, **kwargs):
        sink.write(b"PAR1 partial")
        raise RuntimeError("worker killed")

    monkeypatch.setattr(table_io.pq, "write_table", partial_then_crash)
    with pytest.raises(RuntimeError, match="worker killed"):
        table_io.write_table(MASKS.table([mask_row(obj=9)]), str(target))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["t.parquet"]
    assert table_io.read_table(str(target)).equals(old)


def test_create_only_write(tmp_path: Path) -> None:
    target = str(tmp_path / "plan.json")
    table_io.write_json_atomic(target, {"a": 1}, overwrite=False)
    with pytest.raises(FileExistsError):
        table_io.write_json_atomic(target, {"a": 2}, overwrite=False)
    assert table_io.read_json(target) == {"a": 1}
    assert os.listdir(tmp_path) == ["plan.json"]
    table_io.write_json_atomic(target, {"a": 3})
    assert table_io.read_json(target) == {"a": 3}


def test_json_never_holds_secrets(tmp_path: Path) -> None:
    target = str(tmp_path / "r.json")
    storage = StorageOptions(key="AKIA-REAL", secret="very-secret")
    table_io.write_json_atomic(target, {"storage": storage, "when": T0})
    text = Path(target).read_text()
    assert "very-secret" not in text and "AKIA-REAL" not in text
    assert json.loads(text)["when"] == "2026-11-26T12:00:00Z"


def test_local_listing_and_exists(tmp_path: Path) -> None:
    root = tmp_path / "masks"
    assert table_io.list_files(str(root)) == []
    assert not table_io.exists(str(root))
    files = [
        "a/shard-00001.parquet",
        "a/.shard-2.parquet.x.tmp",
        "b/shard-00000.parquet",
        "b/_SUCCESS",
        "b/notes.txt",
    ]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    assert table_io.list_files(str(root), suffix=".parquet") == [
        f"{root}/a/shard-00001.parquet",
        f"{root}/b/shard-00000.parquet",
    ]
    assert len(table_io.list_files(f"file://{root}/", include_hidden=True)) == 5
    assert table_io.exists(f"{root}/b/_SUCCESS")


def test_read_table_names_a_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(TableError, match="bad.parquet: not a readable Parquet file"):
        table_io.read_table(str(bad))
    with pytest.raises(FileNotFoundError):
        table_io.read_table(str(tmp_path / "missing.parquet"))


# --- the ledger on a local folder -----------------------------------------------------------


def test_shard_crash_between_files_is_redone_without_duplicates(tmp_path: Path, monkeypatch):
    out, run = str(tmp_path), "run-a"
    masks = MASKS.table([mask_row(video="b", frame=1), mask_row(video="a")])
    errors = ERRORS.table([error_row("c")])
    real_write = table_io.write_table

    def crash_on_masks(table, uri, *args, **kwargs):
        if "/masks/" in uri:
            raise RuntimeError("killed")
        return real_write(table, uri, *args, **kwargs)

    monkeypatch.setattr(table_io, "write_table", crash_on_masks)
    with pytest.raises(RuntimeError, match="killed"):
        ledger.write_shard(out, run, "shard-00000", masks, errors)
    monkeypatch.undo()
    layout = ledger.RunLayout(out, run)
    assert table_io.exists(layout.errors_file("shard-00000"))  # errors first...
    assert ledger.finished_shards(out, run) == set()  # ...so not finished

    ledger.write_shard(out, run, "shard-00000", masks, errors)
    ledger.write_shard(out, run, "shard-00001", MASKS.empty(), ERRORS.empty())
    assert ledger.finished_shards(out, run) == {"shard-00000", "shard-00001"}
    back = table_io.read_table(layout.masks_file("shard-00000"))
    assert back.column("video_id").to_pylist() == ["a", "b"]  # sorted on write
    assert table_io.read_table(layout.errors_file("shard-00000")).num_rows == 1


def test_write_shard_refuses_rows_of_another_run(tmp_path: Path) -> None:
    masks = MASKS.table([mask_row(run="run-b")])
    with pytest.raises(TableError, match="rows of another run"):
        ledger.write_shard(str(tmp_path), "run-a", "shard-00000", masks, ERRORS.empty())
    assert table_io.list_files(str(tmp_path)) == []


def test_plan_is_saved_once_and_reused(tmp_path: Path, caplog) -> None:
    out = str(tmp_path)
    assert ledger.load_plan(out, "r") is None
    first = ledger.load_or_create_plan(out, "r", ["b", "a", "c"], 2)
    with caplog.at_level(logging.WARNING, logger="pipeline.ledger"):
        again = ledger.load_or_create_plan(out, "r", ["new", "c", "b", "a"], 3)
    assert again == first and again.videos_per_shard == 2
    assert "not in its saved plan" in caplog.text and "keeping the saved plan" in caplog.text
    other = ledger.make_plan("r", ["z"], 1)
    assert ledger.save_plan(out, other) == first


def test_commit_needs_every_shard_and_the_record(tmp_path: Path) -> None:
    out, run = str(tmp_path), "r"
    with pytest.raises(ledger.LedgerError, match="no plan"):
        ledger.mark_success(out, run)
    plan = ledger.load_or_create_plan(out, run, ["a", "b", "c"], 2)
    ledger.write_shard(out, run, plan.shard_names[0], MASKS.empty(), ERRORS.empty())
    with pytest.raises(ledger.LedgerError, match=r"1 of 2 shard\(s\) unfinished.*shard-00001"):
        ledger.mark_success(out, run)
    ledger.write_shard(out, run, plan.shard_names[1], MASKS.empty(), ERRORS.empty())
    with pytest.raises(ledger.LedgerError, match="run record"):
        ledger.mark_success(out, run)
    assert not ledger.is_committed(out, run)

    uri = ledger.write_run_record(out, run, {"status": "succeeded", "videos": 3})
    assert table_io.read_json(uri) == {"run_id": "r", "status": "succeeded", "videos": 3}
    marker = ledger.mark_success(out, run)
    assert marker.shards == 2 and ledger.is_committed(out, run)
    assert ledger.mark_success(out, run) == marker  # never written twice
    with pytest.raises(ledger.LedgerError, match="not 'r'"):
        ledger.write_run_record(out, run, {"run_id": "other"})
