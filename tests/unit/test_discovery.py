"""Corpus discovery, streaming frame readers and seed readers on local folders.

Corpora are built in tmp folders from a few real DAVIS frames and masks (../shared/data/real,
read in place) and from tiny videos encoded here with PyAV. Expected values come from
stm_core.io reading the same files (the independent local-disk reader), from pycocotools encoding
masks built here, or from how the test files were made (frame counts, grey levels, sizes).
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import av
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from pycocotools import mask as coco_mask

from pipeline.corpus import (
    FrameScale,
    VideoInfo,
    discover,
    frame_name,
    frame_names,
    iter_frames,
    probe,
    read_seeds,
)
from schemas.tables import SEEDS_SCHEMA
from stm_core import io as stm_io
from stm_core.errors import InputError

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
REAL_FRAMES = REAL / "JPEGImages" / "480p"
REAL_MASKS = REAL / "Annotations" / "480p"
REAL_SIZE = (480, 854)  # SOURCES.md: blackswan, cutie-bike, cutie-judo frames are 854x480

pytestmark = pytest.mark.skipif(
    not REAL_FRAMES.is_dir(), reason=f"real test clips not found at {REAL}"
)

LOCAL = fsspec.filesystem("file")
VIDEO_SIZE = (48, 64)  # (height, width) of the encoded test videos
VIDEO_FRAMES = 6


# --- builders --------------------------------------------------------------------------------


def copy_real(seq: str, count: int, frames_dir: Path, masks_dir: Path | None) -> None:
    """The first ``count`` frames of a real sequence, and its masks among them."""
    frames_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted((REAL_FRAMES / seq).glob("*.jpg"))[:count]:
        shutil.copy(src, frames_dir / src.name)
        mask = REAL_MASKS / seq / f"{src.stem}.png"
        if masks_dir is not None and mask.is_file():
            masks_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(mask, masks_dir / mask.name)


def make_davis(root: Path, seqs: dict[str, int]) -> Path:
    for seq, count in seqs.items():
        copy_real(
            seq, count, root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq
        )
    return root


def grey_level(i: int) -> int:
    """Frame i of a test video is flat grey at this level (distinct for i < 6)."""
    return 30 + 40 * (i % 6)


def encode_video(
    path: Path,
    count: int = VIDEO_FRAMES,
    size: tuple[int, int] = VIDEO_SIZE,
    faststart: bool = False,
    noise: bool = False,
) -> None:
    """A tiny libx264 video (crf 0: lossless in YUV) of flat grey frames; ``noise`` adds a
    random square so frames are bigger and a cut lands inside a frame's data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}
        for i in range(count):
            frame = np.full((*size, 3), grey_level(i), np.uint8)
            if noise:
                frame[: size[0] // 2, : size[1] // 2] = rng.integers(
                    0, 256, (size[0] // 2, size[1] // 2, 3)
                )
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def rle(mask: np.ndarray) -> bytes:
    """COCO compressed counts of a 2-D mask, straight from pycocotools."""
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


def rect(top: int, left: int, bottom: int, right: int, size=VIDEO_SIZE) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[top:bottom, left:right] = True
    return mask


def problems(result) -> set[tuple[str | None, str]]:
    return {(e.video_id, e.error_type) for e in result.errors}


def only_task(result, video_id: str):
    (task,) = [t for t in result.tasks if t.video_id == video_id]
    return task


# --- DAVIS and YouTube-VOS layouts ------------------------------------------------------------


def test_davis_root_matches_stm_core_reader(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"blackswan": 3, "cutie-bike": 2})
    result = discover(str(root))
    assert result.errors == []
    assert result.layout == "davis"
    assert [t.video_id for t in result.tasks] == ["blackswan", "cutie-bike"]

    swan = result.tasks[0]
    assert swan.kind == "frames"
    assert swan.frame_files == ("00000.jpg", "00001.jpg", "00002.jpg")
    assert swan.frame_names == ("00000", "00001", "00002")
    assert swan.seeds.kind == "masks" and swan.seeds.frames == (0, 1, 2)
    frames_dir = root / "JPEGImages" / "480p" / "blackswan"
    assert swan.size_bytes == sum(p.stat().st_size for p in frames_dir.iterdir())
    assert result.tasks[1].seeds.frames == (0,)  # cutie-bike: first frame only
    blob = pickle.dumps(swan)
    assert pickle.loads(blob) == swan
    assert len(blob) < 2000  # names, not paths or arrays

    for task in result.tasks:  # the same pixels as stm_core.io's file readers
        frame_paths = sorted((root / "JPEGImages" / "480p" / task.video_id).iterdir())
        stems = [path.stem for path in frame_paths]
        info = probe(task, LOCAL)
        assert info == VideoInfo(stm_io.read_frame_size(frame_paths[0]), len(frame_paths))
        for got, path in zip(iter_frames(task, LOCAL), frame_paths, strict=True):
            np.testing.assert_array_equal(got, stm_io.read_frame(path))
        seeds = read_seeds(task, LOCAL, info.size)
        masks = sorted((root / "Annotations" / "480p" / task.video_id).glob("*.png"))
        want_seeds = {stems.index(path.stem): stm_io.read_mask(path) for path in masks}
        assert seeds.keys() == want_seeds.keys()
        for index, labels in seeds.items():
            np.testing.assert_array_equal(labels, want_seeds[index])
    bike_ids = set(np.unique(read_seeds(result.tasks[1], LOCAL, REAL_SIZE)[0]).tolist())
    assert bike_ids == {0, 1, 2}  # SOURCES.md: bicycle and rider


def test_discovery_lists_the_corpus_once(tmp_path: Path, monkeypatch) -> None:
    root = make_davis(tmp_path / "davis", {"blackswan": 2, "cutie-bike": 1})
    encode_video(root / "extra" / "clip.mp4", count=2)
    calls: list[str] = []
    real_find = LocalFileSystem.find

    def counting_find(self, path, *args, **kwargs):
        calls.append(path)
        return real_find(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "find", counting_find)
    result = discover(str(root))
    assert len(calls) == 1
    assert {t.video_id for t in result.tasks} == {"blackswan", "cutie-bike"}
    assert problems(result) == {("extra/clip.mp4", "no_seeds")}


def test_youtube_vos_root(tmp_path: Path) -> None:
    root = tmp_path / "ytvos"
    frames = sorted((REAL_FRAMES / "blackswan").glob("*.jpg"))
    for i, src in enumerate(frames[:3]):  # YouTube-VOS names every 5th frame
        (root / "JPEGImages" / "vid_a").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / "JPEGImages" / "vid_a" / f"{5 * i:05d}.jpg")
    masks = root / "Annotations" / "vid_a"
    masks.mkdir(parents=True)
    shutil.copy(REAL_MASKS / "blackswan" / "00001.png", masks / "00005.png")
    copy_real("blackswan", 1, root / "JPEGImages" / "vid_b", None)  # no annotations
    copy_real("blackswan", 1, root / "JPEGImages" / "vid_c", None)
    (root / "Annotations" / "vid_c").mkdir()
    shutil.copy(REAL_MASKS / "blackswan" / "00000.png", root / "Annotations" / "vid_c" / "7.png")
    copy_real("blackswan", 1, root / "Annotations" / "ghost", None)  # masks, no frames
    shutil.copy(REAL_MASKS / "blackswan" / "00000.png", root / "Annotations" / "ghost")
    (root / "JPEGImages" / "vid_empty").mkdir()

    result = discover(str(root))
    assert result.layout == "youtube-vos"
    assert [t.video_id for t in result.tasks] == ["vid_a"]
    task = result.tasks[0]
    assert task.frame_names == ("00000", "00005", "00010")
    # the mask of frame "00005" seeds frame index 1: indices are positions, not file numbers
    assert task.seeds.frames == (1,)
    assert task.seeds.mask_files == ((1, "00005.png"),)
    assert problems(result) == {
        ("vid_b", "no_seeds"),
        ("vid_c", "seed_frame_unknown"),
        ("ghost", "seed_without_video"),
        ("vid_empty", "empty_frame_folder"),
    }
    seeds = read_seeds(task, LOCAL, REAL_SIZE)
    np.testing.assert_array_equal(
        seeds[1], stm_io.read_mask(REAL_MASKS / "blackswan" / "00001.png")
    )


def test_davis_root_without_the_resolution_is_one_row(tmp_path: Path) -> None:
    root = tmp_path / "davis"
    copy_real("blackswan", 1, root / "JPEGImages" / "Full-Resolution" / "blackswan", None)
    result = discover(str(root))
    assert result.tasks == []
    (error,) = result.errors
    assert error.error_type == "bad_layout"
    assert "480p" in error.message and "Full-Resolution" in error.message


# --- flat corpora, video files, COCO and Parquet seeds ----------------------------------------


@pytest.fixture(scope="module")
def flat_corpus(tmp_path_factory) -> Path:
    """set1/catA/ (2 real frames), clips/a.mp4 (6 frames), deep/x/b.mkv (3 frames), an empty
    folder, a text file and a hidden video that must be ignored."""
    root = tmp_path_factory.mktemp("flat") / "corpus"
    copy_real("blackswan", 2, root / "set1" / "catA", None)
    encode_video(root / "clips" / "a.mp4")
    (root / "clips" / "notes.txt").write_text("not a video")
    encode_video(root / "deep" / "x" / "b.mkv", count=3)
    (root / "empty").mkdir()
    encode_video(root / ".hidden" / "c.mp4", count=1)
    return root


def coco_document() -> tuple[dict, dict[str, dict[int, np.ndarray]]]:
    """A COCO seed file for the flat corpus and the label maps it describes."""
    swan = stm_io.read_mask(REAL_MASKS / "blackswan" / "00000.png")
    one, two, three = rect(4, 4, 20, 30), rect(24, 30, 40, 60), rect(0, 0, 10, 10)
    doc = {
        "videos": [
            {"id": 1, "name": "set1/catA"},
            {"id": 2, "name": "clips/a.mp4"},
            {"id": 3, "name": "ghost.mp4"},
        ],
        "images": [
            {"id": 10, "video_id": 1, "frame_index": 0},
            {"id": 20, "video_id": 2, "frame_index": 0},
            {"id": 23, "video_id": 2, "frame_index": 3},
            {"id": 30, "video_id": 3, "frame_index": 0},
        ],
        "annotations": [
            {"image_id": 10, "track_id": 1, "segmentation": _rle_json(swan > 0)},
            {"image_id": 20, "track_id": 1, "segmentation": _rle_json(one)},
            {"image_id": 20, "track_id": 2, "segmentation": _rle_json(two)},
            # uncompressed RLE: runs down the columns (10 columns of 10 on, 38 off)
            {
                "image_id": 23,
                "track_id": 3,
                "segmentation": {
                    "size": list(VIDEO_SIZE),
                    "counts": [0] + [10, 38] * 9 + [10, 38 + 48 * 54],
                },
            },
            {"image_id": 30, "category_id": 1, "segmentation": _rle_json(one)},
        ],
    }
    a0 = np.zeros(VIDEO_SIZE, np.uint8)
    a0[one], a0[two] = 1, 2
    a3 = np.zeros(VIDEO_SIZE, np.uint8)
    a3[three] = 3
    return doc, {"set1/catA": {0: (swan > 0).astype(np.uint8)}, "clips/a.mp4": {0: a0, 3: a3}}


def _rle_json(mask: np.ndarray) -> dict:
    return {"size": list(mask.shape), "counts": rle(mask).decode("ascii")}


def test_flat_corpus_with_coco_seeds(flat_corpus: Path, tmp_path: Path) -> None:
    doc, expected = coco_document()
    seeds_path = tmp_path / "seeds.json"
    seeds_path.write_text(json.dumps(doc))
    result = discover(str(flat_corpus), seeds_uri=str(seeds_path))
    assert result.layout == "folders"
    assert [t.video_id for t in result.tasks] == ["clips/a.mp4", "set1/catA"]
    assert problems(result) == {
        ("deep/x/b.mkv", "no_seeds"),
        ("empty", "empty_frame_folder"),
        ("ghost.mp4", "seed_without_video"),
    }
    clip = only_task(result, "clips/a.mp4")
    assert clip.kind == "file" and clip.num_frames is None
    assert clip.size_bytes == (flat_corpus / "clips" / "a.mp4").stat().st_size
    assert clip.seeds.kind == "coco" and clip.seeds.frames == (0, 3)
    assert clip.seeds.version  # fingerprint for worker caches
    for task in result.tasks:
        size = probe(task, LOCAL).size
        seeds = read_seeds(task, LOCAL, size)
        assert seeds.keys() == expected[task.video_id].keys()
        for index, labels in seeds.items():
            np.testing.assert_array_equal(labels, expected[task.video_id][index])


def test_videos_without_a_videos_list_and_object_id_key(flat_corpus: Path, tmp_path: Path) -> None:
    """Without 'videos', images[].video_id is the corpus video id; 'object_id' names objects."""
    mask = rect(0, 0, 8, 8)
    doc = {
        "images": [{"id": 1, "video_id": "deep/x/b.mkv", "frame_index": 2}],
        "annotations": [{"image_id": 1, "object_id": 7, "segmentation": _rle_json(mask)}],
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    result = discover(str(flat_corpus), seeds_uri=str(path), seeds_format="coco")
    task = only_task(result, "deep/x/b.mkv")
    (labels,) = read_seeds(task, LOCAL, VIDEO_SIZE, num_frames=3).values()
    np.testing.assert_array_equal(labels, mask.astype(np.uint8) * 7)


def write_seed_table(path: Path, rows: list[tuple[str, int, int, np.ndarray]]) -> None:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_parquet_seed_table(flat_corpus: Path, tmp_path: Path) -> None:
    one, two = rect(4, 4, 20, 30), rect(10, 10, 30, 40)  # overlapping: the higher id wins
    write_seed_table(
        tmp_path / "seeds.parquet",
        [
            ("clips/a.mp4", 1, 5, one),
            ("clips/a.mp4", 1, 2, two),
            ("deep/x/b.mkv", 0, 1, one),
            ("set1/catA", 5, 1, np.ones(REAL_SIZE, bool)),  # frame 5 of a 2-frame folder
        ],
    )
    result = discover(str(flat_corpus), seeds_uri=str(tmp_path / "seeds.parquet"))
    assert [t.video_id for t in result.tasks] == ["clips/a.mp4", "deep/x/b.mkv"]
    assert problems(result) == {
        ("set1/catA", "seed_frame_unknown"),
        ("empty", "empty_frame_folder"),
    }
    clip = only_task(result, "clips/a.mp4")
    assert clip.seeds.kind == "parquet" and clip.seeds.frames == (1,)
    want = np.zeros(VIDEO_SIZE, np.uint8)
    want[two] = 2
    want[one] = 5
    seeds = read_seeds(clip, LOCAL, VIDEO_SIZE)
    assert list(seeds) == [1]
    np.testing.assert_array_equal(seeds[1], want)

    # a folder of Parquet files is a seed table too ("auto" looks inside)
    write_seed_table(tmp_path / "table" / "part-0.parquet", [("clips/a.mp4", 0, 1, one)])
    folder = discover(str(flat_corpus), seeds_uri=str(tmp_path / "table"))
    assert only_task(folder, "clips/a.mp4").seeds.kind == "parquet"


def test_seed_size_and_frame_errors_name_the_source(flat_corpus: Path, tmp_path: Path) -> None:
    table = tmp_path / "bad.parquet"
    small = rect(0, 0, 5, 5, size=(40, 64))
    write_seed_table(
        table,
        [("clips/a.mp4", 0, 1, small), ("deep/x/b.mkv", 9, 1, rect(0, 0, 5, 5))],
    )
    result = discover(str(flat_corpus), seeds_uri=str(table))
    clip, mkv = only_task(result, "clips/a.mp4"), only_task(result, "deep/x/b.mkv")
    with pytest.raises(InputError, match=r"bad\.parquet.*64x40.*64x48"):
        read_seeds(clip, LOCAL, VIDEO_SIZE)
    # a file's frame count is unknown at discovery: read_seeds checks it when given
    with pytest.raises(InputError, match=r"bad\.parquet.*\[9\].*3 \(indices 0\.\.2\)"):
        read_seeds(mkv, LOCAL, VIDEO_SIZE, num_frames=3)
    assert list(read_seeds(mkv, LOCAL, VIDEO_SIZE)) == [9]  # unchecked without a count

    bad_id = tmp_path / "bad_id.parquet"
    write_seed_table(bad_id, [("clips/a.mp4", 0, 300, rect(0, 0, 5, 5))])
    task = only_task(discover(str(flat_corpus), seeds_uri=str(bad_id)), "clips/a.mp4")
    with pytest.raises(InputError, match=r"object id must be in 1\.\.255"):
        read_seeds(task, LOCAL, VIDEO_SIZE)


def test_png_seed_of_another_size(tmp_path: Path) -> None:
    """Real data: cutie-judo/00005.png is 853 wide beside 854-wide frames (SOURCES.md)."""
    root = make_davis(tmp_path / "davis", {"cutie-judo": 6})
    (task,) = discover(str(root)).tasks
    with pytest.raises(InputError, match=r"00005\.png.*853x480.*854x480"):
        read_seeds(task, LOCAL, REAL_SIZE)
    seeds = read_seeds(task, LOCAL, REAL_SIZE, resize_mismatched=True)
    assert sorted(seeds) == [0, 5] and seeds[5].shape == REAL_SIZE
    with pytest.raises(InputError, match=r"\[5\].*5 \(indices 0\.\.4\)"):
        read_seeds(task, LOCAL, REAL_SIZE, num_frames=5, resize_mismatched=True)


def test_unreadable_sources_are_single_rows(flat_corpus: Path, tmp_path: Path) -> None:
    missing = discover(str(tmp_path / "no-such-corpus"))
    assert missing.tasks == []
    assert problems(missing) == {(None, "unreadable_uri")}
    assert "no-such-corpus" in missing.errors[0].message

    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("videos coming soon")
    assert problems(discover(str(tmp_path / "nothing"))) == {(None, "no_videos")}

    no_seeds = discover(str(flat_corpus), seeds_uri=str(tmp_path / "gone.json"))
    assert no_seeds.tasks == []
    (error,) = no_seeds.errors[-1:]
    assert (error.stage, error.error_type) == ("seed", "unreadable_uri")
    assert "gone.json" in error.message

    (tmp_path / "broken.json").write_text("{not json")
    broken = discover(str(flat_corpus), seeds_uri=str(tmp_path / "broken.json"))
    assert broken.tasks == [] and broken.errors[-1].error_type == "bad_seed_source"

    (tmp_path / "polygons.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "video_id": "clips/a.mp4", "frame_index": 0}],
                "annotations": [{"image_id": 1, "track_id": 1, "segmentation": [[0, 0, 5, 5]]}],
            }
        )
    )
    polygons = discover(str(flat_corpus), seeds_uri=str(tmp_path / "polygons.json"))
    assert "polygons" in polygons.errors[-1].message

    pq.write_table(pa.table({"video_id": ["clips/a.mp4"], "frame_index": [0]}), tmp_path / "t.pq")
    thin = discover(str(flat_corpus), seeds_uri=str(tmp_path / "t.pq"))
    assert thin.tasks == [] and thin.errors[-1].error_type == "bad_seed_source"
    assert "lacks columns ['object_id', 'height', 'width', 'rle']" in thin.errors[-1].message

    elsewhere = discover(str(flat_corpus), seeds_uri="memory://seeds.json")
    assert "same scheme" in elsewhere.errors[-1].message  # the worker reads through one fs

    with pytest.raises(ValueError, match="seeds_format"):
        discover(str(flat_corpus), seeds_format="csv")  # a caller's bug, not a data problem


def test_single_file_corpus_and_masks_folder_for_files(tmp_path: Path) -> None:
    """A corpus URI that is one video file; PNG seeds named by frame number for a file."""
    encode_video(tmp_path / "one.mp4", count=3)
    masks = tmp_path / "masks" / "one.mp4"
    masks.mkdir(parents=True)
    stm_io.write_mask(masks / "000002.png", rect(0, 0, 4, 4).astype(np.uint8) * 3)
    result = discover(str(tmp_path / "one.mp4"), seeds_uri=str(tmp_path / "masks"))
    assert result.layout == "file"
    (task,) = result.tasks
    assert (task.video_id, task.kind, task.seeds.frames) == ("one.mp4", "file", (2,))
    seeds = read_seeds(task, LOCAL, VIDEO_SIZE)
    assert set(np.unique(seeds[2]).tolist()) == {0, 3}


def test_duplicate_frame_names_and_empty_video_files(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"blackswan": 2})
    Image.new("RGB", (854, 480)).save(root / "JPEGImages" / "480p" / "blackswan" / "00000.png")
    (root / "empty.mp4").write_bytes(b"")
    result = discover(str(root))
    assert result.tasks == []
    assert problems(result) == {("blackswan", "duplicate_frame_name"), ("empty.mp4", "empty_file")}


def test_discovery_scales_linearly(tmp_path: Path) -> None:
    """5,000 videos in 500 folders, seeds for all in one COCO file: discovery must stay
    well under the seconds budget (a per-video scan of the listing would take minutes)."""
    root = tmp_path / "big"
    images, annotations = [], []
    seg = _rle_json(rect(0, 0, 2, 2, size=(4, 4)))
    for i in range(5000):
        path = root / f"d{i % 500:03d}" / f"v{i:04d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        video_id = path.relative_to(root).as_posix()
        images.append({"id": i, "video_id": video_id, "frame_index": 0})
        annotations.append({"image_id": i, "track_id": 1, "segmentation": seg})
    (tmp_path / "seeds.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    started = time.perf_counter()
    result = discover(str(root), seeds_uri=str(tmp_path / "seeds.json"))
    elapsed = time.perf_counter() - started
    assert len(result.tasks) == 5000 and result.errors == []
    assert elapsed < 10.0, f"discovery of 5,000 videos took {elapsed:.1f} s"


# --- video files -------------------------------------------------------------------------------


def _file_task(flat_corpus: Path, name: str = "clips/a.mp4"):
    doc = {
        "images": [{"id": 1, "video_id": name, "frame_index": 0}],
        "annotations": [
            {"image_id": 1, "track_id": 1, "segmentation": _rle_json(rect(0, 0, 2, 2))}
        ],
    }
    path = flat_corpus.parent / f"seeds-{name.replace('/', '_')}.json"
    path.write_text(json.dumps(doc))
    return only_task(discover(str(flat_corpus), seeds_uri=str(path)), name)


def test_mp4_frames_in_order(flat_corpus: Path) -> None:
    task = _file_task(flat_corpus)
    assert probe(task, LOCAL) == VideoInfo(VIDEO_SIZE, VIDEO_FRAMES)
    frames = list(iter_frames(task, LOCAL))
    assert len(frames) == VIDEO_FRAMES
    for i, frame in enumerate(frames):
        assert frame.shape == (*VIDEO_SIZE, 3) and frame.dtype == np.uint8
        # crf 0 is lossless in YUV; only RGB <-> YUV rounding remains (a level or two)
        assert np.abs(frame.astype(int) - grey_level(i)).max() <= 2
    assert frame_names(task, VIDEO_FRAMES) == tuple(f"{i:06d}" for i in range(VIDEO_FRAMES))
    assert frame_name(task, 3) == "000003"
    with pytest.raises(ValueError, match="num_frames"):
        frame_names(task)


def test_mkv_states_no_frame_count(flat_corpus: Path) -> None:
    task = _file_task(flat_corpus, "deep/x/b.mkv")
    assert probe(task, LOCAL) == VideoInfo(VIDEO_SIZE, None)
    assert len(list(iter_frames(task, LOCAL))) == 3


def test_max_side_downscales_and_reports_the_scale(flat_corpus: Path, tmp_path: Path) -> None:
    scale = FrameScale.for_size(VIDEO_SIZE, 32)
    assert scale.working == (24, 32) and scale.scale == 0.5 and scale.resized
    assert FrameScale.for_size(VIDEO_SIZE, 64) == FrameScale(VIDEO_SIZE, VIDEO_SIZE)
    native = np.zeros(VIDEO_SIZE, np.uint8)
    native[:24, :32] = 4
    small = scale.to_working(native)
    assert small.shape == (24, 32) and small[:12, :16].min() == 4 and small[12:].max() == 0

    clip = _file_task(flat_corpus)
    small = list(iter_frames(clip, LOCAL, max_side=32))
    assert [f.shape for f in small] == [(24, 32, 3)] * VIDEO_FRAMES
    assert np.abs(small[2].astype(int) - grey_level(2)).max() <= 2  # flat stays flat

    root = make_davis(tmp_path / "davis", {"blackswan": 2})
    (task,) = discover(str(root)).tasks
    got = next(iter_frames(task, LOCAL, max_side=100))
    # 854x480 -> longer side 100, shorter 480 * 100 / 854 = 56.2 -> 56
    assert got.shape == (56, 100, 3)
    reference = Image.fromarray(stm_io.read_frame(root / "JPEGImages/480p/blackswan/00000.jpg"))
    want = np.asarray(reference.resize((100, 56), Image.Resampling.BOX))
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory) -> Path:
    """Corrupt copies of test videos, in a corpus of their own."""
    root = tmp_path_factory.mktemp("bad") / "corpus"
    root.mkdir()
    encode_video(root.parent / "src" / "plain.mp4", count=VIDEO_FRAMES)
    encode_video(
        root.parent / "src" / "fast.mp4", count=40, size=(96, 128), faststart=True, noise=True
    )
    plain = (root.parent / "src" / "plain.mp4").read_bytes()
    fast = (root.parent / "src" / "fast.mp4").read_bytes()
    (root / "half.mp4").write_bytes(plain[: len(plain) // 2])  # moov at the end is lost
    (root / "tail_cut.mp4").write_bytes(plain[:-100])  # opens, 0 frames (platform-facts 5)
    with av.open(str(root.parent / "src" / "fast.mp4")) as container:  # faststart: moov first
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    pos, size = packets[25]
    (root / "mid.mp4").write_bytes(fast[: pos + size // 2])  # fails inside packet 25
    (root / "clean_cut.mp4").write_bytes(fast[: packets[20][0]])  # ends between two packets
    (root / "text.mp4").write_text("hello, I am not a video")
    return root


def _bad_task(root: Path, name: str):
    doc = {
        "images": [{"id": 1, "video_id": name, "frame_index": 0}],
        "annotations": [
            {"image_id": 1, "track_id": 1, "segmentation": _rle_json(rect(0, 0, 2, 2))}
        ],
    }
    (root.parent / "seeds.json").write_text(json.dumps(doc))
    return only_task(discover(str(root), seeds_uri=str(root.parent / "seeds.json")), name)


@pytest.mark.parametrize("name", ["half.mp4", "text.mp4"])
def test_unreadable_video_names_it(bad_videos: Path, name: str) -> None:
    task = _bad_task(bad_videos, name)
    with pytest.raises(InputError, match=rf"{name}.*(not a readable video|no video stream)"):
        list(iter_frames(task, LOCAL))
    with pytest.raises(InputError, match=name):
        probe(task, LOCAL)


def test_video_with_no_frames(bad_videos: Path) -> None:
    task = _bad_task(bad_videos, "tail_cut.mp4")
    with pytest.raises(InputError, match=r"tail_cut\.mp4.*has no frames"):
        list(iter_frames(task, LOCAL))
    with pytest.raises(InputError, match="has no frames"):
        probe(task, LOCAL)


def test_video_corrupt_mid_stream(bad_videos: Path) -> None:
    task = _bad_task(bad_videos, "mid.mp4")
    frames = iter_frames(task, LOCAL)
    got = []
    with pytest.raises(
        InputError, match=r"mid\.mp4 \(video 'mid\.mp4', frame (\d+)\).*corrupt"
    ) as err:
        for frame in frames:
            got.append(frame)
    assert got, "frames before the damage come out first"
    assert f"frame {len(got)})" in str(err.value)


def test_video_cut_between_packets(bad_videos: Path) -> None:
    task = _bad_task(bad_videos, "clean_cut.mp4")
    with pytest.raises(InputError, match=r"states 40 frames but only \d+ decode"):
        list(iter_frames(task, LOCAL))
    assert len(list(iter_frames(task, LOCAL, check_frame_count=False))) == 20  # packets 0..19


def test_expected_size_mismatch_names_the_frame(flat_corpus: Path) -> None:
    task = _file_task(flat_corpus)
    with pytest.raises(InputError, match=r"frame 0\).*64x48.*differs from 60x40"):
        next(iter_frames(task, LOCAL, expected_size=(40, 60)))


# --- frame folders: bad frames and laziness ---------------------------------------------------


def _folder_task(root: Path, seq: str = "blackswan"):
    return only_task(discover(str(root)), seq)


def test_corrupt_and_truncated_frames(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"blackswan": 4})
    folder = root / "JPEGImages" / "480p" / "blackswan"
    (folder / "00002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    half = (folder / "00003.jpg").read_bytes()
    (folder / "00003.jpg").write_bytes(half[: len(half) // 2])
    task = _folder_task(root)
    frames = iter_frames(task, LOCAL)
    assert len([next(frames), next(frames)]) == 2  # the good frames come first
    with pytest.raises(
        InputError, match=r"00002\.jpg \(video 'blackswan', frame 2\).*not a readable"
    ):
        next(frames)

    # frame 3 is cut in half: seen through a task that lists it second
    skip2 = type(task)(task.video_id, task.kind, task.uri, ("00000.jpg", "00003.jpg"), task.seeds)
    with pytest.raises(InputError, match=r"00003\.jpg \(video 'blackswan', frame 1\).*truncated"):
        list(iter_frames(skip2, LOCAL))


def test_frames_of_different_sizes(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"blackswan": 3})
    Image.new("RGB", (64, 48)).save(root / "JPEGImages/480p/blackswan/00001.jpg")
    frames = iter_frames(_folder_task(root), LOCAL)
    next(frames)
    with pytest.raises(InputError, match=r"00001\.jpg.*frame 1\).*64x48.*differs from 854x480"):
        next(frames)


class CountingFS:
    """Passes reads to the local filesystem and records which files were read."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def cat_file(self, path: str, *args, **kwargs) -> bytes:
        self.reads.append(path)
        return LOCAL.cat_file(path, *args, **kwargs)

    def open(self, path: str, mode: str = "rb", **kwargs):
        self.reads.append(path)
        return LOCAL.open(path, mode, **kwargs)


def _drain_pool(frames: Iterator[np.ndarray]) -> None:
    frames.close()  # cancels reads not yet started, lets running ones finish
    time.sleep(0.05)


def test_frames_are_read_as_they_are_needed(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"blackswan": 8})
    task = _folder_task(root)

    spy = CountingFS()
    frames = iter_frames(task, spy, prefetch=0)
    assert spy.reads == []  # nothing happens before the first frame is asked for
    next(frames)
    next(frames)
    assert [Path(p).name for p in spy.reads] == ["00000.jpg", "00001.jpg"]
    _drain_pool(frames)
    assert len(spy.reads) == 2

    spy = CountingFS()
    frames = iter_frames(task, spy, prefetch=2)
    next(frames)
    time.sleep(0.05)
    assert 1 <= len(spy.reads) <= 3  # the frame taken plus at most 2 ahead
    _drain_pool(frames)
    assert len(spy.reads) <= 3

    spy = CountingFS()
    assert len(list(iter_frames(task, spy, prefetch=3))) == 8
    assert sorted(Path(p).name for p in spy.reads) == [f"{i:05d}.jpg" for i in range(8)]


def test_video_file_is_streamed_from_the_file_object(flat_corpus: Path) -> None:
    """PyAV reads through fs.open (one open per pass), never a path or a local copy."""
    task = _file_task(flat_corpus)
    spy = CountingFS()
    frames = iter_frames(task, spy)
    assert spy.reads == []
    next(frames)
    assert spy.reads == [str(flat_corpus / "clips" / "a.mp4")]
    frames.close()


def test_decode_from_bytes_is_the_stm_core_decode(tmp_path: Path) -> None:
    """Decoding bytes (the fsspec readers' path) must agree with stm_core.io's file readers on
    mask modes (palette and 'L') and frames, and drop alpha."""
    from stm_core.codec import decode_frame, decode_label_map

    for path in (REAL_MASKS / "cutie-bike" / "00000.png", REAL_MASKS / "blackswan" / "00000.png"):
        np.testing.assert_array_equal(
            decode_label_map(path.read_bytes(), str(path)), stm_io.read_mask(path)
        )
    frame = REAL_FRAMES / "blackswan" / "00000.jpg"
    np.testing.assert_array_equal(
        decode_frame(frame.read_bytes(), str(frame)), stm_io.read_frame(frame)
    )
    buffer = io.BytesIO()
    Image.new("RGBA", (5, 4), (10, 20, 30, 40)).save(buffer, format="PNG")
    rgba = decode_frame(buffer.getvalue(), "rgba.png")
    assert rgba.shape == (4, 5, 3) and rgba[0, 0].tolist() == [10, 20, 30]
