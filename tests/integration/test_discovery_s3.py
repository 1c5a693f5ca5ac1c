"""Discovery and streaming readers against S3 (a moto server on loopback, tests/integration/
conftest.py): a corpus of frame folders and an mp4 plus a Parquet seed table is uploaded, and
everything read from S3 must equal the same corpus read from local disk.

What S3 adds over the local unit tests: keys with no folder objects, s3fs listing caches (an
object written by another client must show up in the next discovery), PyAV reading through an
s3fs file object, and Parquet through fsspec.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as coco_mask

from pipeline.corpus import Discovery, discover, iter_frames, probe, read_seeds
from pipeline.storage import open_fs
from schemas.tables import SEEDS_SCHEMA
from stm_core import io as stm_io

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
REAL_FRAMES = REAL / "JPEGImages" / "480p"
REAL_MASKS = REAL / "Annotations" / "480p"

pytestmark = pytest.mark.skipif(
    not REAL_FRAMES.is_dir(), reason=f"real test clips not found at {REAL}"
)

VIDEO_SIZE = (48, 64)  # (height, width)


def encode_video(path: Path, count: int) -> None:
    """A tiny libx264 mp4 of flat grey frames (level 30 + 40 i)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        for i in range(count):
            frame = np.full((*VIDEO_SIZE, 3), 30 + 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def rle(mask: np.ndarray) -> bytes:
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


@pytest.fixture(scope="module")
def local_tree(tmp_path_factory) -> Path:
    """``corpus/`` (blackswan x 3 frames, cutie-bike x 2, clips/a.mp4 x 5) and
    ``seeds.parquet`` (one seeded frame per video; cutie-bike's has two objects)."""
    base = tmp_path_factory.mktemp("s3src")
    corpus = base / "corpus"
    for seq, count in (("blackswan", 3), ("cutie-bike", 2)):
        (corpus / seq).mkdir(parents=True)
        for src in sorted((REAL_FRAMES / seq).glob("*.jpg"))[:count]:
            (corpus / seq / src.name).write_bytes(src.read_bytes())
    encode_video(corpus / "clips" / "a.mp4", 5)

    swan = stm_io.read_mask(REAL_MASKS / "blackswan" / "00001.png")
    bike = stm_io.read_mask(REAL_MASKS / "cutie-bike" / "00000.png")
    square = np.zeros(VIDEO_SIZE, bool)
    square[10:20, 5:25] = True
    rows = [
        ("blackswan", 1, 1, swan == 1),
        ("cutie-bike", 0, 1, bike == 1),
        ("cutie-bike", 0, 2, bike == 2),
        ("clips/a.mp4", 2, 1, square),
    ]
    table = pa.table(
        {
            "video_id": [r[0] for r in rows],
            "frame_index": [r[1] for r in rows],
            "object_id": [r[2] for r in rows],
            "height": [r[3].shape[0] for r in rows],
            "width": [r[3].shape[1] for r in rows],
            "rle": [rle(r[3]) for r in rows],
        },
        schema=SEEDS_SCHEMA,
    )
    pq.write_table(table, base / "seeds.parquet")
    return base


@pytest.fixture(scope="module")
def s3_tree(s3_server, local_tree: Path) -> str:
    """The local tree uploaded under a fresh prefix (keys only: S3 has no folders)."""
    prefix = s3_server.uri(f"discovery-{uuid.uuid4().hex[:8]}")
    bucket_path = prefix.removeprefix("s3://")
    s3_server.fs.pipe(
        {
            f"{bucket_path}/{p.relative_to(local_tree).as_posix()}": p.read_bytes()
            for p in local_tree.rglob("*")
            if p.is_file()
        }
    )
    return prefix


def discover_both(s3_server, local_tree: Path, s3_tree: str) -> tuple[Discovery, Discovery]:
    local = discover(str(local_tree / "corpus"), seeds_uri=str(local_tree / "seeds.parquet"))
    remote = discover(f"{s3_tree}/corpus", s3_server.storage, seeds_uri=f"{s3_tree}/seeds.parquet")
    return local, remote


def test_discovery_on_s3_equals_local(s3_server, local_tree: Path, s3_tree: str) -> None:
    local, remote = discover_both(s3_server, local_tree, s3_tree)
    assert remote.errors == [] and local.errors == []
    assert remote.layout == local.layout == "folders"
    assert [t.video_id for t in remote.tasks] == ["blackswan", "clips/a.mp4", "cutie-bike"]
    for got, want in zip(remote.tasks, local.tasks, strict=True):
        assert got.uri.startswith(f"{s3_tree}/corpus/")
        assert (got.video_id, got.kind, got.frame_files, got.size_bytes) == (
            want.video_id,
            want.kind,
            want.frame_files,
            want.size_bytes,
        )
        assert (got.seeds.kind, got.seeds.frames) == (want.seeds.kind, want.seeds.frames)
        assert got.seeds.uri == f"{s3_tree}/seeds.parquet"


def test_frames_and_seeds_from_s3_equal_local(s3_server, local_tree: Path, s3_tree: str) -> None:
    local, remote = discover_both(s3_server, local_tree, s3_tree)
    s3_fs, _ = open_fs(s3_tree, s3_server.storage)
    local_fs, _ = open_fs(str(local_tree))
    for got, want in zip(remote.tasks, local.tasks, strict=True):
        info = probe(got, s3_fs)
        assert info == probe(want, local_fs)
        for a, b in zip(iter_frames(got, s3_fs), iter_frames(want, local_fs), strict=True):
            np.testing.assert_array_equal(a, b)
        seeds = read_seeds(got, s3_fs, info.size, num_frames=info.num_frames)
        want_seeds = read_seeds(want, local_fs, info.size, num_frames=info.num_frames)
        assert seeds.keys() == want_seeds.keys() == set(got.seeds.frames)
        for index in seeds:
            np.testing.assert_array_equal(seeds[index], want_seeds[index])
    bike = read_seeds(remote.tasks[2], s3_fs, (480, 854))[0]
    np.testing.assert_array_equal(bike, stm_io.read_mask(REAL_MASKS / "cutie-bike" / "00000.png"))
    assert len(list(iter_frames(remote.tasks[1], s3_fs))) == 5  # the mp4, through s3fs


def test_a_video_added_by_another_client_is_found(s3_server, s3_tree: str) -> None:
    """Discovery's filesystem is fsspec's cached instance with a listing cache; an object
    another client writes afterwards must still be listed by the next discovery. (s3fs's find
    lists afresh anyway; other fsspec backends may not, hence the invalidation.)"""
    first = discover(f"{s3_tree}/corpus", s3_server.storage, seeds_uri=f"{s3_tree}/seeds.parquet")
    assert "late/b.mp4" not in {t.video_id for t in first.tasks}
    key = f"{s3_tree.removeprefix('s3://')}/corpus/late/b.mp4"
    s3_server.fs.pipe_file(key, b"not decoded here")
    try:
        second = discover(
            f"{s3_tree}/corpus", s3_server.storage, seeds_uri=f"{s3_tree}/seeds.parquet"
        )
        assert ("late/b.mp4", "no_seeds") in {(e.video_id, e.error_type) for e in second.errors}
    finally:
        s3_server.fs.rm_file(key)


def test_missing_bucket_and_seed_file_are_rows(s3_server, s3_tree: str) -> None:
    missing = discover("s3://no-such-bucket/corpus", s3_server.storage)
    assert missing.tasks == []
    assert [(e.video_id, e.error_type) for e in missing.errors] == [(None, "unreadable_uri")]

    no_seeds = discover(f"{s3_tree}/corpus", s3_server.storage, seeds_uri=f"{s3_tree}/nope.parquet")
    assert no_seeds.tasks == []
    assert [(e.stage, e.error_type) for e in no_seeds.errors] == [("seed", "unreadable_uri")]


def test_a_rewritten_seed_table_is_read_again(s3_server, local_tree: Path, s3_tree: str) -> None:
    """Another client rewrites the seed table between two discoveries: the second sees the new
    rows and a new version (the key of the workers' seed cache), not a cached listing."""
    seeds_uri = f"{s3_tree}/seeds.parquet"
    key = seeds_uri.removeprefix("s3://")
    original = s3_server.fs.cat_file(key)
    first = discover(f"{s3_tree}/corpus", s3_server.storage, seeds_uri=seeds_uri)
    # another part of this process lists the prefix through fsspec's shared s3fs instance
    # (the one discovery gets too), so the instance now holds a listing of the old file
    shared_fs, prefix = open_fs(s3_tree, s3_server.storage)
    assert key in shared_fs.ls(prefix)
    table = pq.read_table(local_tree / "seeds.parquet")
    moved = table.set_column(1, "frame_index", pa.array([2, 1, 1, 4], pa.int32()))
    sink = pa.BufferOutputStream()
    pq.write_table(moved, sink)
    s3_server.fs.pipe_file(key, sink.getvalue().to_pybytes())
    try:
        second = discover(f"{s3_tree}/corpus", s3_server.storage, seeds_uri=seeds_uri)
        frames = {t.video_id: t.seeds.frames for t in second.tasks}
        assert frames == {"blackswan": (2,), "cutie-bike": (1,), "clips/a.mp4": (4,)}
        assert second.tasks[0].seeds.version != first.tasks[0].seeds.version
    finally:
        s3_server.fs.pipe_file(key, original)
