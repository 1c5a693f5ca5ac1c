"""``gs://`` everywhere the project uses fsspec, against a real GCS JSON-API endpoint on
loopback (gcp-storage-emulator, the ``gcs_server`` fixture of conftest.py), gcsfs and a pyarrow
filesystem over it; never the network (anonymous token, explicit endpoint).

- table_io: Parquet and JSON round trips, create-only writes, listing, existence, deletion,
  and the output read as a hive-partitioned pyarrow dataset;
- discovery and the streaming readers: a corpus uploaded to gs:// gives the same videos, frames
  and seeds as its local copy, and an object written by another client is found next time;
- the corpus job: corpus and output on gs:// commit the same masks as a local run.

The emulator ignores upload preconditions (``ifGenerationMatch=0``), so a create-only write is
checked here only against an object that is already there, not against a racing writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from corpus_factory import CorpusBuilder, make_checkpoint, read_output, synthetic_video

from pipeline import ledger, rle, table_io
from pipeline.corpus import discover, iter_frames, probe, read_seeds
from pipeline.corpus_job import run_label_job
from pipeline.storage import open_fs, pyarrow_filesystem, split_uri
from schemas.label_job import LabelJobConfig
from schemas.tables import MASKS, RUN_PARTITION_SCHEMA, MaskRow

# video id -> (frames, objects, {seeded frame: objects seeded there}); sizes as in corpus_factory
VIDEOS: dict[str, tuple[int, int, dict[int, tuple[int, ...]]]] = {
    "swan": (4, 2, {0: (1, 2)}),
    "clips/a.mp4": (4, 1, {1: (1,)}),  # an mp4 read through a gcsfs file; frame 0 unseeded
}


def upload(gcs_server, local_root: Path, uri: str) -> str:
    """Every file under ``local_root`` to the ``gs://`` prefix ``uri`` in one batch."""
    _, prefix = split_uri(uri)
    gcs_server.fs.pipe(
        {
            f"{prefix}/{p.relative_to(local_root).as_posix()}": p.read_bytes()
            for p in sorted(local_root.rglob("*"))
            if p.is_file()
        }
    )
    return uri


def masks_table(run_id: str, video: str) -> pa.Table:
    """Two frames of one video, object 1 present and object 2 absent (4 rows)."""
    rows = []
    for t in range(2):
        labels = np.zeros((12, 16), np.uint8)
        labels[t : t + 4, 2:8] = 1
        for e in rle.encode_label_map(labels, [1, 2]):  # object 2 is absent: area 0
            rows.append(
                MaskRow(
                    run_id=run_id,
                    video_id=video,
                    frame_index=t,
                    frame_name=f"{t:05d}",
                    object_id=e.object_id,
                    height=12,
                    width=16,
                    rle=e.rle,
                    area=e.area,
                    bbox=e.bbox,
                    score=0.5,
                    is_seed=t == 0,
                    checkpoint_id="ckpt-gs",
                )
            )
    return MASKS.table(rows)


# --- table_io --------------------------------------------------------------------------------


def test_tables_and_json_round_trip(gcs_server, gs_prefix: str) -> None:
    table = masks_table("a", "cat")
    uri = f"{gs_prefix}/masks/run_id=a/shard-00000.parquet"
    size = table_io.write_table(table, uri, gcs_server.storage)
    assert size == gcs_server.fs.size(split_uri(uri)[1])
    assert table_io.read_table(uri, gcs_server.storage).equals(table)

    doc = f"{gs_prefix}/runs/a.json"
    table_io.write_json_atomic(doc, {"status": "running", "n": 1}, gcs_server.storage)
    table_io.write_json_atomic(doc, {"status": "done", "n": 2}, gcs_server.storage)  # overwrite
    assert table_io.read_json(doc, gcs_server.storage) == {"status": "done", "n": 2}

    # siblings that share a name prefix, a hidden file and a marker
    ab = f"{gs_prefix}/masks/run_id=ab/s.parquet"
    table_io.write_table(masks_table("ab", "dog"), ab, gcs_server.storage)
    table_io.write_bytes(f"{gs_prefix}/masks/run_id=a/_SUCCESS", b"{}", gcs_server.storage)
    table_io.write_bytes(f"{gs_prefix}/masks/run_id=a/.tmp", b"x", gcs_server.storage)
    assert table_io.list_files(f"{gs_prefix}/masks/run_id=a", gcs_server.storage) == [uri]
    masks = table_io.list_files(f"{gs_prefix}/masks", gcs_server.storage, suffix=".parquet")
    assert masks == [uri, ab]
    assert len(table_io.list_files(gs_prefix, gcs_server.storage, include_hidden=True)) == 5
    assert table_io.list_files(f"{gs_prefix}/nothing", gcs_server.storage) == []

    # the folder reads as one hive-partitioned dataset through the pyarrow filesystem
    fs, path = pyarrow_filesystem(f"{gs_prefix}/masks", gcs_server.storage)
    dataset = ds.dataset(
        path,
        filesystem=fs,
        format="parquet",
        partitioning=ds.partitioning(RUN_PARTITION_SCHEMA, flavor="hive"),
    )  # "_SUCCESS" and ".tmp" are skipped by pyarrow's default ignore_prefixes
    got = dataset.to_table().sort_by([("run_id", "ascending"), ("frame_index", "ascending")])
    assert got["run_id"].to_pylist() == ["a"] * 4 + ["ab"] * 4
    assert got["video_id"].to_pylist() == ["cat"] * 4 + ["dog"] * 4

    assert table_io.exists(uri, gcs_server.storage)
    assert table_io.exists(f"{gs_prefix}/masks", gcs_server.storage)  # a "folder"
    assert not table_io.exists(f"{gs_prefix}/masks/none.parquet", gcs_server.storage)
    assert table_io.delete(uri, gcs_server.storage) is True
    assert table_io.delete(uri, gcs_server.storage) is False
    assert not table_io.exists(uri, gcs_server.storage)
    with pytest.raises(FileNotFoundError):
        table_io.read_bytes(uri, gcs_server.storage)


def test_create_only_write_refuses_an_existing_object(gcs_server, gs_prefix: str) -> None:
    uri = f"{gs_prefix}/runs/r/plan.json"
    table_io.write_json_atomic(uri, {"shards": 1}, gcs_server.storage, overwrite=False)
    with pytest.raises(FileExistsError, match="plan.json"):
        table_io.write_json_atomic(uri, {"shards": 2}, gcs_server.storage, overwrite=False)
    assert table_io.read_json(uri, gcs_server.storage) == {"shards": 1}
    # written by another client after this process looked: still refused
    other = f"{gs_prefix}/runs/r/other.json"
    assert not table_io.exists(other, gcs_server.storage)
    gcs_server.fs.pipe_file(split_uri(other)[1], b"{}")
    with pytest.raises(FileExistsError):
        table_io.write_bytes(other, b"[]", gcs_server.storage, overwrite=False)
    assert gcs_server.fs.cat_file(split_uri(other)[1]) == b"{}"


def test_gcs_uri_spellings_and_pyarrow_filesystem(gcs_server, gs_prefix: str) -> None:
    """``gcs://`` is the same store as ``gs://``; pyarrow writes and reads through the
    filesystem Ray Train gets (checkpoint folders are written this way)."""
    assert split_uri("gcs://b/k/")[0] == split_uri("gs://b/k")[0] == "gs"
    table_io.write_bytes(f"{gs_prefix}/x.bin", b"abc", gcs_server.storage)
    spelled = gs_prefix.replace("gs://", "gcs://", 1)
    assert table_io.read_bytes(f"{spelled}/x.bin", gcs_server.storage) == b"abc"

    fs, path = pyarrow_filesystem(f"{gs_prefix}/ckpt/", gcs_server.storage)
    assert path == split_uri(gs_prefix)[1] + "/ckpt"
    with fs.open_output_stream(f"{path}/checkpoint_0/model.pt") as f:
        f.write(b"weights")
    with fs.open_input_stream(f"{path}/checkpoint_0/model.pt") as f:
        assert f.read() == b"weights"
    assert table_io.list_files(f"{gs_prefix}/ckpt", gcs_server.storage) == [
        f"{gs_prefix}/ckpt/checkpoint_0/model.pt"
    ]


# --- discovery and readers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusBuilder:
    """Two small videos (a frame folder and an mp4) plus a Parquet seed table, on local disk."""
    builder = CorpusBuilder(tmp_path_factory.mktemp("gcs-corpus"))
    for n, (video_id, (frames, objects, seeds)) in enumerate(VIDEOS.items()):
        size = (64, 96) if video_id.endswith(".mp4") else (48, 64)
        builder.add_video(video_id, synthetic_video(20 + n, frames, size, objects), seeds)
    builder.write_seed_table()
    return builder


@pytest.fixture(scope="module")
def gs_corpus(gcs_server, corpus: CorpusBuilder) -> str:
    """The corpus uploaded under its own ``gs://`` prefix (the root holding ``corpus/`` and
    ``seeds.parquet``)."""
    return upload(gcs_server, corpus.root, gcs_server.uri("gcs-corpus"))


def test_discovery_on_gcs_equals_local(gcs_server, corpus: CorpusBuilder, gs_corpus: str) -> None:
    local = discover(str(corpus.corpus), seeds_uri=str(corpus.seed_table))
    remote = discover(
        f"{gs_corpus}/corpus", gcs_server.storage, seeds_uri=f"{gs_corpus}/seeds.parquet"
    )
    assert remote.errors == [] and local.errors == []
    assert [t.video_id for t in remote.tasks] == sorted(VIDEOS) == [t.video_id for t in local.tasks]
    gs_fs, _ = open_fs(gs_corpus, gcs_server.storage)
    local_fs, _ = open_fs(str(corpus.root))
    for got, want in zip(remote.tasks, local.tasks, strict=True):
        assert got.uri.startswith(f"{gs_corpus}/corpus/")
        assert (got.kind, got.frame_files, got.size_bytes) == (
            want.kind,
            want.frame_files,
            want.size_bytes,
        )
        assert (got.seeds.kind, got.seeds.frames) == (want.seeds.kind, want.seeds.frames)
        assert got.seeds.uri == f"{gs_corpus}/seeds.parquet"
        info = probe(got, gs_fs)
        assert info == probe(want, local_fs)
        frames = list(iter_frames(got, gs_fs))
        assert len(frames) == VIDEOS[got.video_id][0]
        for a, b in zip(frames, iter_frames(want, local_fs), strict=True):
            np.testing.assert_array_equal(a, b)
        seeds = read_seeds(got, gs_fs, info.size, num_frames=info.num_frames)
        want_seeds = read_seeds(want, local_fs, info.size, num_frames=info.num_frames)
        assert seeds.keys() == want_seeds.keys() == set(VIDEOS[got.video_id][2])
        for index in seeds:
            np.testing.assert_array_equal(seeds[index], want_seeds[index])
            np.testing.assert_array_equal(seeds[index], corpus.expected_seeds[got.video_id][index])


def test_a_video_added_by_another_client_is_found(gcs_server, gs_corpus: str) -> None:
    corpus_uri, seeds_uri = f"{gs_corpus}/corpus", f"{gs_corpus}/seeds.parquet"
    first = discover(corpus_uri, gcs_server.storage, seeds_uri=seeds_uri)
    assert "late/b.mp4" not in {t.video_id for t in first.tasks}
    key = f"{split_uri(corpus_uri)[1]}/late/b.mp4"
    gcs_server.fs.pipe_file(key, b"not decoded here")
    try:
        second = discover(corpus_uri, gcs_server.storage, seeds_uri=seeds_uri)
        assert ("late/b.mp4", "no_seeds") in {(e.video_id, e.error_type) for e in second.errors}
    finally:
        gcs_server.fs.rm_file(key)


def test_a_missing_bucket_is_an_error_row(gcs_server) -> None:
    missing = discover("gs://no-such-bucket/corpus", gcs_server.storage)
    assert missing.tasks == []
    assert [(e.video_id, e.error_type) for e in missing.errors] == [(None, "unreadable_uri")]


# --- the corpus job --------------------------------------------------------------------------


def label_config(corpus_root: str, output: str, checkpoint: Path, run_id: str, storage) -> dict:
    return {
        "corpus_uri": f"{corpus_root}/corpus",
        "seeds_uri": f"{corpus_root}/seeds.parquet",
        "output_uri": output,
        "run_id": run_id,
        "checkpoint_uri": str(checkpoint),
        "workers": 1,
        "cpu_threads_per_worker": 1,
        "mem_every": 2,
        "max_memory_frames": 2,
        "videos_per_shard": 2,
        "storage": storage,
    }


def test_label_job_on_gcs_equals_local(
    ray_local, gcs_server, corpus: CorpusBuilder, gs_corpus: str, tmp_path: Path
) -> None:
    checkpoint = make_checkpoint(tmp_path / "random-resnet18.pt", seed=0)
    local_out = str(tmp_path / "out")
    local = LabelJobConfig.model_validate(
        label_config(str(corpus.root), local_out, checkpoint, "local-1", {})
    )
    gs_out = gcs_server.uri("gcs-label-out")
    storage = json.loads(gcs_server.storage.model_dump_json())
    remote = LabelJobConfig.model_validate(
        label_config(gs_corpus, gs_out, checkpoint, "gs-1", storage)
    )

    local_summary = run_label_job(local)
    remote_summary = run_label_job(remote)
    assert local_summary.status == remote_summary.status == "succeeded"
    assert (remote_summary.videos, remote_summary.frames) == (2, 8)
    assert remote_summary.errors == 0
    assert ledger.is_committed(gs_out, "gs-1", gcs_server.storage)
    assert ledger.read_success(gs_out, "gs-1", gcs_server.storage).shards == 1

    got = read_output(gs_out, gcs_server.storage, "masks")
    want = read_output(local_out, None, "masks")
    assert got.num_rows == want.num_rows == 2 * 4 + 1 * 4  # (frames x objects) per video
    assert got.drop_columns(["run_id"]).equals(want.drop_columns(["run_id"]))
    assert read_output(gs_out, gcs_server.storage, "errors").num_rows == 0
    layout = ledger.RunLayout(gs_out, "gs-1")
    assert table_io.list_files(layout.masks_dir, gcs_server.storage) == [
        layout.masks_file("shard-00000")
    ]
    record = table_io.read_json(layout.record_uri, gcs_server.storage)
    assert record["status"] == "succeeded" and record["output_uri"] == gs_out

    # the same run id again: committed, nothing rewritten
    before = gcs_server.fs.find(split_uri(gs_out)[1], detail=True)
    assert run_label_job(remote) == remote_summary
    after = gcs_server.fs.find(split_uri(gs_out)[1], detail=True)
    assert {k: v["generation"] for k, v in after.items()} == {
        k: v["generation"] for k, v in before.items()
    }
