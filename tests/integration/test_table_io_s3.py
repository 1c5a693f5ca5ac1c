"""Tables and the run ledger on object storage: a real moto S3 server on loopback (the
``s3_server`` fixture of conftest.py), s3fs and pyarrow's S3 filesystem. The DuckDB and Polars
checks read a local output folder: DuckDB would need its httpfs extension (a download) for S3."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from pipeline import ledger, rle, table_io
from pipeline.storage import open_fs, pyarrow_filesystem, split_uri
from schemas.tables import ERRORS, MASKS, RUN_PARTITION_SCHEMA, ErrorRow, MaskRow

RUNS = ("20261126", "nightly-a")  # a numeric-looking run id must still read back as a string


def label_maps(seed: int, frames: int = 3, size: tuple[int, int] = (24, 32)) -> list[np.ndarray]:
    """Random blocky label maps (H x W uint8) with objects 1 and 2; object 2 leaves on the last
    frame, so that frame has an empty mask."""
    rng = np.random.default_rng(seed)
    maps = []
    for t in range(frames):
        labels = np.zeros(size, np.uint8)
        y, x = rng.integers(0, 10, 2)
        labels[y : y + 8, x : x + 12] = 1
        if t < frames - 1:
            labels[rng.random(size) < 0.1] = 2
        maps.append(labels)
    return maps


def masks_for(run_id: str, videos: list[str]) -> tuple[pa.Table, dict[tuple, np.ndarray]]:
    """A masks table for ``videos`` and the expected mask of every (video, frame, object)."""
    rows, truth = [], {}
    for v, video in enumerate(videos):
        for t, labels in enumerate(label_maps(v)):
            for e in rle.encode_label_map(labels, [2, 1]):  # unsorted on purpose
                h, w = labels.shape
                row = MaskRow(
                    run_id=run_id,
                    video_id=video,
                    frame_index=t,
                    frame_name=f"{t:05d}",
                    object_id=e.object_id,
                    height=h,
                    width=w,
                    rle=e.rle,
                    area=e.area,
                    bbox=e.bbox,
                    score=0.9,
                    is_seed=t == 0,
                    checkpoint_id="ckpt-7",
                )
                rows.append(row)
                truth[(video, t, e.object_id)] = labels == e.object_id
    return MASKS.table(rows), truth


def errors_for(run_id: str, video: str) -> pa.Table:
    when = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    return ERRORS.table([ErrorRow(run_id, video, "decode", "InvalidDataError", "truncated", when)])


def keys_under(server, uri: str) -> list[str]:
    """Every object under ``uri``, asked through a second client with no caches."""
    _, path = split_uri(uri)
    return sorted(server.fs.find(path))


def test_masks_table_round_trip(s3_server, s3_prefix: str) -> None:
    table, truth = masks_for("nightly-a", ["cat", "dog"])
    uri = f"{s3_prefix}/masks/shard-00000.parquet"
    size = table_io.write_table(table, uri, s3_server.storage)
    assert keys_under(s3_server, s3_prefix) == [split_uri(uri)[1]]  # one object, no leftovers
    assert s3_server.fs.info(split_uri(uri)[1])["size"] == size

    back = MASKS.check(table_io.read_table(uri, s3_server.storage), uri)
    assert back.equals(table)
    for row in back.to_pylist():
        mask = rle.decode(row["rle"], row["height"], row["width"])
        expected = truth[(row["video_id"], row["frame_index"], row["object_id"])]
        np.testing.assert_array_equal(mask, expected)
        assert row["area"] == expected.sum()
    assert back.filter(pc.equal(back["area"], 0)).num_rows == 2  # object 2 left


def test_listing_sees_other_writers(s3_server, s3_prefix: str) -> None:
    first, second = f"{s3_prefix}/a.parquet", f"{s3_prefix}/b.parquet"
    table_io.write_table(MASKS.empty(), first, s3_server.storage)
    assert table_io.list_files(s3_prefix, s3_server.storage) == [first]

    cached_fs, path = open_fs(s3_prefix, s3_server.storage)  # the instance table_io shares
    assert cached_fs.ls(path) == [split_uri(first)[1]]  # fills its listing cache
    s3_server.fs.pipe_file(split_uri(second)[1], table_io.parquet_bytes(MASKS.empty()))
    assert cached_fs.ls(path) == [split_uri(first)[1]]  # the trap: a stale listing

    assert table_io.list_files(s3_prefix, s3_server.storage) == [first, second]
    assert table_io.list_files(s3_prefix, s3_server.storage, suffix=".json") == []
    assert table_io.exists(second, s3_server.storage)
    assert table_io.list_files(f"{s3_prefix}/nothing", s3_server.storage) == []
    assert table_io.list_files(f"{s3_prefix}/a", s3_server.storage) == []  # a prefix of a name
    assert table_io.list_files(first, s3_server.storage) == [first]  # a file lists itself
    assert not table_io.exists(f"{s3_prefix}/nothing.parquet", s3_server.storage)


def test_overwrite_semantics(s3_server, s3_prefix: str) -> None:
    uri = f"{s3_prefix}/plan.json"
    table_io.write_json_atomic(uri, {"v": 1}, s3_server.storage, overwrite=False)
    with pytest.raises(FileExistsError):
        table_io.write_json_atomic(uri, {"v": 2}, s3_server.storage, overwrite=False)
    assert table_io.read_json(uri, s3_server.storage) == {"v": 1}

    cached_fs, path = open_fs(uri, s3_server.storage)
    cached_fs.ls(path.rsplit("/", 1)[0], detail=True)  # cache the old size and etag
    s3_server.fs.pipe_file(path, b'{"v": "overwritten elsewhere, longer"}')
    assert table_io.read_json(uri, s3_server.storage) == {"v": "overwritten elsewhere, longer"}

    table_io.write_json_atomic(uri, {"v": 3}, s3_server.storage)  # overwrite=True replaces
    assert table_io.read_json(uri, s3_server.storage) == {"v": 3}
    assert keys_under(s3_server, s3_prefix) == [path]


def test_failed_write_leaves_no_object(s3_server, s3_prefix: str, monkeypatch) -> None:
    def partial_then_crash(table, sink, **kwargs):
        sink.write(b"PAR1 half a file")
        raise RuntimeError("worker killed")

    monkeypatch.setattr(table_io.pq, "write_table", partial_then_crash)
    with pytest.raises(RuntimeError, match="worker killed"):
        table_io.write_table(MASKS.empty(), f"{s3_prefix}/x.parquet", s3_server.storage)
    assert keys_under(s3_server, s3_prefix) == []


def write_two_runs(output_uri: str, storage) -> dict[str, pa.Table]:
    """Both runs of ``RUNS`` through the ledger (plan, shards, record, marker); returns each
    run's masks rows in the order a reader should see them."""
    videos = ["cat", "dog", "eel"]
    written = {}
    for run_id in RUNS:
        plan = ledger.load_or_create_plan(output_uri, run_id, videos, 2, storage)
        parts = []
        for shard in plan.shards:
            masks, _ = masks_for(run_id, shard.video_ids)
            errors = errors_for(run_id, shard.video_ids[0])
            ledger.write_shard(output_uri, run_id, shard.name, masks, errors, storage)
            parts.append(MASKS.sort(masks))
        assert ledger.finished_shards(output_uri, run_id, storage) == set(plan.shard_names)
        ledger.write_run_record(output_uri, run_id, {"status": "succeeded"}, storage)
        ledger.mark_success(output_uri, run_id, storage)
        assert ledger.is_committed(output_uri, run_id, storage)
        written[run_id] = pa.concat_tables(parts)
    return written


def test_ledger_on_s3_reads_as_one_pyarrow_dataset(s3_server, s3_prefix: str) -> None:
    written = write_two_runs(s3_prefix, s3_server.storage)
    fs, path = pyarrow_filesystem(s3_prefix, s3_server.storage)
    partitioning = ds.partitioning(RUN_PARTITION_SCHEMA, flavor="hive")
    dataset = ds.dataset(
        f"{path}/masks", filesystem=fs, format="parquet", partitioning=partitioning
    )
    assert dataset.schema.field("run_id").type == pa.string()
    assert dataset.count_rows() == sum(t.num_rows for t in written.values())
    for run_id, expected in written.items():
        got = dataset.to_table(filter=ds.field("run_id") == run_id, columns=MASKS.schema.names)
        assert MASKS.sort(MASKS.check(got)).to_pylist() == expected.to_pylist()
    errors = ds.dataset(f"{path}/errors", filesystem=fs, partitioning=partitioning)
    assert errors.count_rows() == 2 * len(RUNS)  # one per shard, two shards per run


def test_local_output_reads_in_duckdb_and_polars(tmp_path: Path) -> None:
    written = write_two_runs(str(tmp_path), None)
    total = sum(t.num_rows for t in written.values())

    inferred = ds.dataset(tmp_path / "masks", format="parquet", partitioning="hive")
    assert inferred.schema.field("run_id").type == pa.string()
    assert inferred.count_rows() == total

    glob = f"{tmp_path}/masks/*/*.parquet"
    con = duckdb.connect()
    counts = con.execute(
        f"SELECT run_id, typeof(run_id), count(*), min(octet_length(rle)) "
        f"FROM read_parquet('{glob}', hive_partitioning=true) GROUP BY ALL ORDER BY run_id"
    ).fetchall()
    assert [row[:3] for row in counts] == [(r, "VARCHAR", written[r].num_rows) for r in RUNS]
    assert all(row[3] > 0 for row in counts)  # every rle is a non-empty BLOB
    [(rle_bytes, h, w, area, bbox)] = con.execute(
        f"SELECT rle, height, width, area, bbox FROM read_parquet('{glob}') "
        "WHERE run_id = 'nightly-a' AND video_id = 'dog' AND frame_index = 1 AND object_id = 1"
    ).fetchall()
    mask = rle.decode(rle_bytes, h, w)
    assert mask.sum() == area == (label_maps(1)[1] == 1).sum()
    assert len(bbox) == 4

    frame = pl.read_parquet(tmp_path / "masks")
    assert frame.height == total
    assert frame.schema["run_id"] == pl.String and frame.schema["bbox"] == pl.Array(pl.Float32, 4)
    per_run = dict(frame.group_by("run_id").len().iter_rows())
    assert per_run == {run_id: t.num_rows for run_id, t in written.items()}
