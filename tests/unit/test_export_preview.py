"""``stm-label export`` and ``stm-label preview`` on small runs built here, without Ray.

Each run is written the way the corpus job writes one (``ledger.write_shard``, run record, commit
marker) from label maps chosen in the test, over a frame-folder corpus written to ``tmp_path``.
The label maps are the ground truth: the exported PNGs must decode to them, the COCO file must
decode (through pycocotools' own COCO API) and re-encode to the stored masks, and the preview's
pixels must be the overlay of those masks on the corpus frames.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from jobs.cli import main
from pipeline import export, ledger, preview, rle, table_io
from pipeline.run_reader import RunIncompleteError, open_run, parse_run_uri
from schemas.tables import ERRORS, MASKS, MaskRow
from stm_core.errors import InputError
from stm_core.io import DAVIS_PALETTE, read_mask

RUN = "r1"
BACKGROUND = (90, 120, 150)  # RGB of every corpus frame


# --- building runs ----------------------------------------------------------------------------


def _labels(size: tuple[int, int], index: int, boxes: dict[int, tuple[int, int, int, int]]):
    """``H x W`` uint8 label map with object k filling rows y0:y1, cols x0:x1 shifted right by
    ``index`` pixels; a box with y0 == y1 is absent on that frame."""
    labels = np.zeros(size, dtype=np.uint8)
    for obj, (y0, y1, x0, x1) in boxes.items():
        labels[y0:y1, x0 + index : x1 + index] = obj
    return labels


# video id -> (frame size (H, W), frame count, label map of frame i)
VIDEOS = {
    # odd width: the MP4 must pad it; object 2 leaves the frame after frame 2 (empty rows)
    "set1/cat": (
        (24, 33),
        5,
        lambda i: _labels(
            (24, 33), i, {1: (4, 16, 2, 14), 2: (16, 22, 20, 30) if i < 3 else (0, 0, 0, 0)}
        ),
    ),
    "dog": ((16, 20), 3, lambda i: _labels((16, 20), i, {3: (2, 10, 1, 9)})),
}


def truth(video_id: str) -> dict[int, np.ndarray]:
    _, count, make = VIDEOS[video_id]
    return {i: make(i) for i in range(count)}


def write_corpus(root: Path) -> tuple[Path, Path]:
    """A flat corpus of frame folders (``set1/cat``, ``dog``) and a seed folder beside it."""
    corpus, seeds = root / "corpus", root / "seeds"
    for video_id, (size, count, make) in VIDEOS.items():
        folder = corpus / video_id
        folder.mkdir(parents=True)
        for i in range(count):
            frame = np.empty((*size, 3), dtype=np.uint8)
            frame[:] = BACKGROUND
            Image.fromarray(frame).save(folder / f"{i:05d}.png")
        seed = seeds / video_id / "00000.png"
        seed.parent.mkdir(parents=True)
        Image.fromarray(make(0)).save(seed)
    return corpus, seeds


def mask_rows(
    run_id: str, video_id: str, frames: dict[int, np.ndarray], digits: int = 5
) -> list[MaskRow]:
    """Rows as the job writes them; frames are named by their index with ``digits`` digits (5
    for these frame folders, 6 as the job names a video file's frames)."""
    ids = sorted({int(v) for labels in frames.values() for v in np.unique(labels) if v})
    rows = []
    for index, labels in frames.items():
        height, width = labels.shape
        for enc in rle.encode_label_map(labels, ids):
            score = 1.0 if index == 0 else 0.75 if enc.area else 0.0
            rows.append(
                MaskRow(
                    run_id,
                    video_id,
                    index,
                    f"{index:0{digits}d}",
                    enc.object_id,
                    height,
                    width,
                    enc.rle,
                    enc.area,
                    enc.bbox,
                    score,
                    index == 0,
                    "ckpt-test",
                )  # fmt: skip
            )
    return rows


def write_run(
    output: Path,
    corpus: Path,
    seeds: Path,
    *,
    run_id: str = RUN,
    finished: tuple[str, ...] | None = None,
    failed: tuple[str, ...] = (),
    commit: bool = True,
) -> str:
    """A run over VIDEOS, one video per shard; ``finished`` limits the shards written, videos in
    ``failed`` get a shard without rows (as when labeling them raised). Returns the run URI
    (``<output>/runs/<run_id>``)."""
    plan = ledger.save_plan(str(output), ledger.make_plan(run_id, VIDEOS, 1))
    for shard in plan.shards:
        (video_id,) = shard.video_ids
        if finished is not None and video_id not in finished:
            continue
        rows = [] if video_id in failed else mask_rows(run_id, video_id, truth(video_id))
        table = MASKS.table(rows)
        ledger.write_shard(str(output), run_id, shard.name, table, ERRORS.empty())
    if commit:
        config = {
            "corpus_uri": str(corpus),
            "seeds_uri": str(seeds),
            "seeds_format": "masks",
            "storage": {"anon": False, "endpoint_url": None, "region": None},
        }
        record = {"config": config, "checkpoint_id": "ckpt-test", "status": "succeeded"}
        ledger.write_run_record(str(output), run_id, record)
        ledger.mark_success(str(output), run_id)
    return f"{output}/runs/{run_id}"


@pytest.fixture()
def run_uri(tmp_path: Path) -> str:
    corpus, seeds = write_corpus(tmp_path)
    return write_run(tmp_path / "out", corpus, seeds)


def stored_rows(run_uri: str) -> list[dict]:
    """Every masks row of the run, read straight from the Parquet files (not via run_reader)."""
    layout = parse_run_uri(run_uri)
    files = table_io.list_files(layout.masks_dir, suffix=".parquet")
    return [row for f in files for row in table_io.read_table(f).to_pylist()]


# --- run URIs and opening runs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "output", "run_id"),
    [
        ("out/runs/demo", "out", "demo"),
        ("out/runs/demo/", "out", "demo"),
        ("out/runs/demo.json", "out", "demo"),
        ("s3://bucket/a/b/runs/n-1", "s3://bucket/a/b", "n-1"),
        ("runs/demo", ".", "demo"),
    ],
)
def test_parse_run_uri(uri, output, run_id):
    layout = parse_run_uri(uri)
    assert (layout.output_uri, layout.run_id) == (output, run_id)


@pytest.mark.parametrize("uri", ["out/masks/demo", "out/runs/", "out/runs/bad id"])
def test_parse_run_uri_rejects_other_paths(uri):
    with pytest.raises(InputError, match="runs/<run_id>|run id"):
        parse_run_uri(uri)


def test_label_maps_merge_objects_per_frame(run_uri):
    run = open_run(run_uri)
    assert run.committed and run.video_ids() == ["dog", "set1/cat"]
    video = run.video("set1/cat")
    assert (video.height, video.width, video.num_frames) == (24, 33, 5)
    assert video.object_ids == [1, 2]
    got = {f.frame_index: f.labels for f in video.iter_frames()}
    want = truth("set1/cat")
    assert sorted(got) == sorted(want)
    for index, labels in want.items():
        np.testing.assert_array_equal(got[index], labels)
    np.testing.assert_array_equal(video.label_map(3).labels, want[3])


# --- export -----------------------------------------------------------------------------------


def test_davis_export_round_trips(run_uri, tmp_path, capsys):
    out = tmp_path / "davis"
    assert main(["export", "--run", run_uri, "--format", "davis", "--out", str(out)]) == 0
    assert "exported 8 PNGs of 8 frames in 2 videos" in capsys.readouterr().out
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    expected = [f"{v}/{i:05d}.png" for v in sorted(VIDEOS) for i in range(VIDEOS[v][1])]
    assert written == sorted(expected)  # "set1/cat" became nested folders
    for row in stored_rows(run_uri):  # every stored mask, decoded by pycocotools itself
        path = out / row["video_id"] / f"{row['frame_name']}.png"
        image = Image.open(path)
        assert image.mode == "P" and bytes(image.getpalette()) == DAVIS_PALETTE[: 3 * 256]
        stored = coco_mask.decode(
            {"size": [row["height"], row["width"]], "counts": row["rle"]}
        ).astype(bool)
        np.testing.assert_array_equal(read_mask(path) == row["object_id"], stored)
    for video_id in VIDEOS:  # and the whole label maps, background included
        for index, labels in truth(video_id).items():
            np.testing.assert_array_equal(read_mask(out / video_id / f"{index:05d}.png"), labels)


def test_coco_export_round_trips_through_pycocotools(run_uri, tmp_path):
    out = tmp_path / "coco"
    assert main(["export", "--run", run_uri, "--format", "coco", "--out", str(out)]) == 0
    doc = json.loads((out / "instances.json").read_text())
    coco = COCO(str(out / "instances.json"))  # pycocotools' own loader indexes it
    videos = {v["id"]: v for v in doc["videos"]}
    assert sorted(v["name"] for v in videos.values()) == sorted(VIDEOS)
    assert len(doc["images"]) == sum(count for _, count, _ in VIDEOS.values())
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3]

    rows = stored_rows(run_uri)
    nonempty = {(r["video_id"], r["frame_index"], r["object_id"]): r for r in rows if r["area"]}
    assert len(doc["annotations"]) == len(nonempty)  # absent objects have no annotation
    seen = set()
    for ann in doc["annotations"]:
        image = coco.imgs[ann["image_id"]]
        video = videos[image["video_id"]]
        key = (video["name"], image["frame_index"], ann["category_id"])
        row = nonempty[key]
        assert ann["track_id"] == ann["category_id"] and ann["iscrowd"] == 0
        assert isinstance(ann["segmentation"]["counts"], str)
        decoded = coco.annToMask(ann)  # H x W uint8, decoded by pycocotools
        want = truth(video["name"])[image["frame_index"]] == ann["category_id"]
        np.testing.assert_array_equal(decoded.astype(bool), want)
        again = coco_mask.encode(np.asfortranarray(decoded))
        assert again["counts"] == row["rle"]  # re-encodes to the stored bytes
        assert ann["area"] == int(want.sum()) == int(coco_mask.area(again))
        np.testing.assert_allclose(ann["bbox"], coco_mask.toBbox(again))
        assert ann["score"] == pytest.approx(row["score"])
        assert image["file_name"] == f"{video['name']}/{row['frame_name']}"
        assert (image["height"], image["width"]) == VIDEOS[video["name"]][0]
        seen.add(key)
    assert seen == set(nonempty)


def test_export_selected_videos_only(run_uri, tmp_path):
    out = tmp_path / "one"
    code = main(
        ["export", "--run", run_uri, "--format", "davis", "--out", str(out), "--video", "dog"]
    )
    assert code == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "dog/00000.png",
        "dog/00001.png",
        "dog/00002.png",
    ]


def test_davis_folder_refuses_ids_that_leave_the_output(tmp_path):
    assert export.davis_folder(tmp_path, "a/b") == tmp_path / "a" / "b"
    for bad in ("../up", "a//b", "/abs", "a/./b"):
        with pytest.raises(InputError, match="cannot name"):
            export.davis_folder(tmp_path, bad)


# --- names that round-trip: video files, collisions, COCO file names ----------------------------

MP4_SIZE = (16, 24)  # (H, W), even for yuv420p
MP4_FRAMES = 4


def mp4_frame(index: int) -> np.ndarray:
    """Frame ``index`` of the test mp4: flat grey, a different level per frame."""
    return np.full((*MP4_SIZE, 3), 40 + 50 * index, dtype=np.uint8)


def mp4_truth() -> dict[int, np.ndarray]:
    return {i: _labels(MP4_SIZE, i, {1: (2, 10, 1, 8)}) for i in range(MP4_FRAMES)}


def encode_mp4(path: Path) -> None:
    """``MP4_FRAMES`` frames of :func:`mp4_frame` as a lossless (crf 0) libx264 mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = MP4_SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}
        for i in range(MP4_FRAMES):
            frame = av.VideoFrame.from_ndarray(mp4_frame(i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_named_run(root: Path, videos: dict[str, int]) -> str:
    """A committed run over a corpus in ``root/corpus``: each id in ``videos`` maps to the digits
    of its stored frame names; ids ending in ``.mp4`` are video files (6 digits, as the job names
    them) holding :func:`mp4_frame`, the others frame folders like ``dog``. Every video's masks
    are :func:`mp4_truth` or ``dog``'s truth. Seeds are PNGs named as the README says:
    ``seeds/<video id>/00000.png``. Returns the run URI."""
    corpus, seeds, output = root / "corpus", root / "seeds", root / "out"
    plan = ledger.save_plan(str(output), ledger.make_plan(RUN, sorted(videos), 1))
    for shard in plan.shards:
        (video_id,) = shard.video_ids
        if video_id.endswith(".mp4"):
            encode_mp4(corpus / video_id)
            frames = mp4_truth()
        else:
            size, count, _ = VIDEOS["dog"]
            frames = truth("dog")
            (corpus / video_id).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(
                    corpus / video_id / f"{i:05d}.png"
                )
        seed = seeds / video_id / "00000.png"
        seed.parent.mkdir(parents=True)
        Image.fromarray(frames[0]).save(seed)
        rows = mask_rows(RUN, video_id, frames, digits=videos[video_id])
        ledger.write_shard(str(output), RUN, shard.name, MASKS.table(rows), ERRORS.empty())
    config = {"corpus_uri": str(corpus), "seeds_uri": str(seeds), "seeds_format": "masks"}
    ledger.write_run_record(str(output), RUN, {"config": config, "checkpoint_id": "ckpt-test"})
    ledger.mark_success(str(output), RUN)
    return f"{output}/runs/{RUN}"


def pngs(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))


@pytest.mark.parametrize(
    ("video_id", "clean"),
    [
        ("car-shadow.mp4", "car-shadow"),
        ("clips/a.MOV", "clips/a"),
        ("b.webm", "b"),
        ("set1/cat", "set1/cat"),
        ("cat.jpg", "cat.jpg"),
        (".mp4", ".mp4"),
    ],
)
def test_clean_video_id_drops_a_video_suffix(video_id, clean):
    assert export.clean_video_id(video_id) == clean


def test_davis_export_names_a_video_file_like_davis(tmp_path, capsys):
    """``clips/car.mp4`` (stored frame names 000000...) -> ``clips/car/00000.png``; a frame
    folder keeps its own names; ``--frame-digits`` changes only the video file's."""
    uri = write_named_run(tmp_path, {"clips/car.mp4": 6, "dog": 5})
    out = tmp_path / "davis"
    assert main(["export", "--run", uri, "--format", "davis", "--out", str(out)]) == 0
    assert "exported 7 PNGs of 7 frames in 2 videos" in capsys.readouterr().out
    car = [f"clips/car/{i:05d}.png" for i in range(MP4_FRAMES)]
    assert pngs(out) == sorted(car + [f"dog/{i:05d}.png" for i in range(3)])
    for index, labels in mp4_truth().items():
        np.testing.assert_array_equal(read_mask(out / f"clips/car/{index:05d}.png"), labels)

    wide = tmp_path / "wide"
    args = ["export", "--run", uri, "--format", "davis", "--out", str(wide), "--frame-digits", "3"]
    assert main(args) == 0
    assert pngs(wide)[:2] == ["clips/car/000.png", "clips/car/001.png"]
    assert "dog/00000.png" in pngs(wide)


def test_two_videos_sharing_a_folder_are_refused(tmp_path, capsys):
    uri = write_named_run(tmp_path, {"cat.mp4": 6, "cat": 5})
    out = tmp_path / "davis"
    assert main(["export", "--run", uri, "--format", "davis", "--out", str(out)]) == 2
    _one_error_line(capsys, "'cat'", "'cat.mp4'", "--video")
    assert not out.exists()  # refused before anything is written
    args = ["export", "--run", uri, "--format", "coco", "--out", str(out), "--with-frames"]
    assert main(args) == 2
    _one_error_line(capsys, "'cat'", "'cat.mp4'")
    assert not out.exists()
    # one at a time, each into its own folder
    args = ["export", "--run", uri, "--format", "davis", "--out", str(out), "--video", "cat"]
    assert main(args) == 0
    assert pngs(out) == ["cat/00000.png", "cat/00001.png", "cat/00002.png"]
    # COCO without frames writes no folders: both videos go into one JSON
    assert main(["export", "--run", uri, "--format", "coco", "--out", str(out)]) == 0
    doc = json.loads((out / "instances.json").read_text())
    assert sorted(v["name"] for v in doc["videos"]) == ["cat", "cat.mp4"]


def test_coco_file_name_names_a_video_file_and_frame_index(tmp_path):
    uri = write_named_run(tmp_path, {"clips/car.mp4": 6, "dog": 5})
    out = tmp_path / "coco"
    assert main(["export", "--run", uri, "--format", "coco", "--out", str(out)]) == 0
    doc = json.loads((out / "instances.json").read_text())
    names = {v["id"]: v["name"] for v in doc["videos"]}
    got = {(names[i["video_id"]], i["frame_index"]): i["file_name"] for i in doc["images"]}
    assert got[("clips/car.mp4", 2)] == "clips/car.mp4#000002"
    assert got[("dog", 2)] == "dog/00002"  # the frame's path in the corpus, without extension
    assert len(got) == MP4_FRAMES + 3


def test_coco_with_frames_writes_every_frame_beside_the_json(tmp_path, capsys):
    uri = write_named_run(tmp_path, {"clips/car.mp4": 6, "dog": 5})
    out = tmp_path / "coco"
    args = ["export", "--run", uri, "--format", "coco", "--out", str(out), "--with-frames"]
    assert main(args) == 0
    assert f"and 7 frames as JPEGs to {out / 'frames'}" in capsys.readouterr().out
    coco = COCO(str(out / "instances.json"))
    videos = {v["id"]: v["name"] for v in coco.dataset["videos"]}
    for image in coco.dataset["images"]:
        path = out / image["file_name"]
        video, index = videos[image["video_id"]], image["frame_index"]
        folder = "clips/car" if video == "clips/car.mp4" else video
        assert image["file_name"] == f"frames/{folder}/{index:05d}.jpg"
        with Image.open(path) as jpeg:
            assert jpeg.format == "JPEG"
            pixels = np.asarray(jpeg.convert("RGB"), dtype=float)
        assert pixels.shape[:2] == (image["height"], image["width"])
        want = mp4_frame(index) if video == "clips/car.mp4" else np.full(pixels.shape, 90)
        assert np.abs(pixels - want).mean() < 3, (video, index)  # the frame, in order
    assert len(list((out / "frames").rglob("*.jpg"))) == MP4_FRAMES + 3


def test_with_frames_is_for_coco_and_needs_the_corpus(tmp_path, capsys):
    uri = write_named_run(tmp_path, {"clips/car.mp4": 6, "dog": 5})
    out = tmp_path / "x"
    args = ["export", "--run", uri, "--out", str(out), "--with-frames"]
    assert main([*args, "--format", "davis"]) == 2
    _one_error_line(capsys, "--with-frames", "coco")
    shutil.rmtree(tmp_path / "corpus" / "dog")  # exported after clips/car.mp4
    assert main([*args, "--format", "coco"]) == 2
    _one_error_line(capsys, "'dog'", "no longer lists it")
    assert not (out / "instances.json").exists() and not (out / "frames").exists()


# --- errors -----------------------------------------------------------------------------------


def _one_error_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


def test_unknown_video_lists_known_ids(run_uri, tmp_path, capsys):
    args = ["--run", run_uri, "--out", str(tmp_path / "x")]
    assert main(["export", *args, "--format", "coco", "--video", "dog", "cow"]) == 2
    _one_error_line(capsys, "'cow'", "'dog'", "'set1/cat'")
    assert not (tmp_path / "x").exists()  # nothing written before the check
    assert main(["preview", "--run", run_uri, "--video", "cow", "--out", str(tmp_path / "p.gif")])
    _one_error_line(capsys, "'cow'", "'dog'")


def test_missing_run_bad_format_and_bad_suffix(run_uri, tmp_path, capsys):
    missing = str(tmp_path / "out" / "runs" / "nope")
    assert main(["export", "--run", missing, "--format", "davis", "--out", str(tmp_path)]) == 2
    _one_error_line(capsys, "no run 'nope'")
    assert main(["export", "--run", run_uri, "--format", "png", "--out", str(tmp_path)]) == 2
    _one_error_line(capsys, "'png'", "davis or coco")
    out = str(tmp_path / "p.avi")
    assert main(["preview", "--run", run_uri, "--video", "dog", "--out", out]) == 2
    _one_error_line(capsys, ".gif or .mp4")


def test_uncommitted_run_is_refused_unless_allowed(tmp_path, capsys):
    corpus, seeds = write_corpus(tmp_path)
    uri = write_run(tmp_path / "out", corpus, seeds, finished=("dog",), commit=False)
    with pytest.raises(RunIncompleteError, match="not committed"):
        open_run(uri)
    out = tmp_path / "davis"
    assert main(["export", "--run", uri, "--format", "davis", "--out", str(out)]) == 2
    _one_error_line(capsys, "not committed", "--allow-incomplete")
    args = ["export", "--run", uri, "--format", "davis", "--out", str(out), "--allow-incomplete"]
    assert main(args) == 0  # the finished shard only
    assert sorted(p.parent.name for p in out.rglob("*.png")) == ["dog"] * 3
    run = open_run(uri, allow_incomplete=True)
    with pytest.raises(InputError, match="not finished"):
        run.video("set1/cat")
    with pytest.raises(InputError, match="no run record yet"):  # the corpus is unknown
        preview.render_preview(run, "dog", tmp_path / "p.gif")


def test_failed_video_is_skipped_or_named(tmp_path, capsys):
    corpus, seeds = write_corpus(tmp_path)
    uri = write_run(tmp_path / "out", corpus, seeds, failed=("dog",))
    out = tmp_path / "davis"
    assert main(["export", "--run", uri, "--format", "davis", "--out", str(out)]) == 0
    assert {p.parent.parent.name for p in out.rglob("*.png")} == {"set1"}
    assert main(["export", "--run", uri, "--format", "davis", "--out", str(out), "--video", "dog"])
    _one_error_line(capsys, "'dog'", "labeling them failed", "errors/run_id=r1")


# --- preview ----------------------------------------------------------------------------------


def test_overlay_blends_palette_colour_and_outlines_by_hand():
    frame = np.full((9, 9, 3), 100, dtype=np.uint8)
    labels = np.zeros((9, 9), dtype=np.uint8)
    labels[2:7, 2:7] = 1  # a 5 x 5 square of object 1, whose palette colour is (128, 0, 0)
    out = preview.overlay(frame, labels, alpha=0.5, thickness=1)
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    ring[3:6, 3:6] = False  # the 16 border pixels of the square
    np.testing.assert_array_equal(preview.outline(labels, 1), ring)
    np.testing.assert_array_equal(out[ring], np.tile([128, 0, 0], (16, 1)))
    np.testing.assert_array_equal(out[3:6, 3:6].reshape(-1, 3), np.tile([114, 50, 50], (9, 1)))
    np.testing.assert_array_equal(out[labels == 0], frame[labels == 0])


def test_evenly_spaced_keeps_first_and_last():
    assert preview.evenly_spaced(5, 12) == [0, 1, 2, 3, 4]
    assert preview.evenly_spaced(100, 12)[0] == 0 and preview.evenly_spaced(100, 12)[-1] == 99
    assert len(preview.evenly_spaced(100, 12)) == 12
    assert preview.evenly_spaced(7, 3) == [0, 3, 6]


def _expected_frame(video_id: str, index: int) -> np.ndarray:
    size, _, make = VIDEOS[video_id]
    frame = np.empty((*size, 3), dtype=np.uint8)
    frame[:] = BACKGROUND
    return preview.overlay(frame, make(index))


def test_mp4_preview_from_the_corpus(run_uri, tmp_path, capsys):
    out = tmp_path / "prev" / "cat.mp4"
    assert main(["preview", "--run", run_uri, "--video", "set1/cat", "--out", str(out)]) == 0
    assert "cat_sheet.png" in capsys.readouterr().out
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 5 and frames[0].shape == (24, 34, 3)  # 33 wide, padded to even
    plain = np.empty((24, 33, 3), dtype=float)
    plain[:] = BACKGROUND
    for index, got in enumerate(frames):  # lossy (yuv420p on 24 x 34): mean errors, not pixels
        got = got[:, :33].astype(float)
        error = np.abs(got - _expected_frame("set1/cat", index)).mean()
        assert error < 9, (index, error)  # measured 4-8; a frame without overlay is 14-18 off
        assert np.abs(got - plain).mean() > error + 5
        wrong = np.abs(got - _expected_frame("set1/cat", 4 - index)).mean()
        assert index == 2 or wrong > error + 3  # the masks move: frames are in order
    sheet = Image.open(tmp_path / "prev" / "cat_sheet.png")
    assert sheet.mode == "RGB" and sheet.width > 4 * 33 and sheet.height > 2 * 24


def test_gif_preview_caps_frames_and_has_a_sheet(run_uri, tmp_path, monkeypatch):
    monkeypatch.setattr(preview, "GIF_MAX_FRAMES", 3)
    run = open_run(run_uri)
    summary = preview.render_preview(run, "set1/cat", tmp_path / "cat.gif", fps=5)
    assert (summary.frames_read, summary.frames_written) == (5, 3)
    gif = Image.open(tmp_path / "cat.gif")
    assert gif.n_frames == 3 and gif.size == (33, 24)
    # 5 frames at 5 fps last 1000 ms, shown as 3 frames of 333 ms, stored in 10 ms units
    assert gif.info["duration"] == 330
    for position, index in enumerate([0, 2, 4]):
        gif.seek(position)
        got = np.asarray(gif.convert("RGB"), dtype=float)
        assert np.abs(got - _expected_frame("set1/cat", index)).mean() < 6
    assert summary.sheet == tmp_path / "cat_sheet.png" and summary.sheet.is_file()


def test_mp4_frames_are_streamed(run_uri, tmp_path, monkeypatch):
    """Each frame is encoded before the next is read from the source (nothing is buffered)."""
    pulled = []
    encoded_after = []

    def source():
        for index in range(5):
            pulled.append(index)
            yield np.full((24, 33, 3), 80, dtype=np.uint8)

    add = preview._Mp4Writer.add

    def spy(self, index, rgb):
        encoded_after.append(len(pulled))
        add(self, index, rgb)

    monkeypatch.setattr(preview._Mp4Writer, "add", spy)
    run = open_run(run_uri)
    preview.render_preview(run, "set1/cat", tmp_path / "s.mp4", frames=source())
    assert encoded_after == [1, 2, 3, 4, 5]


def test_preview_refuses_frames_of_another_size(run_uri, tmp_path):
    run = open_run(run_uri)
    frames = iter([np.zeros((10, 10, 3), dtype=np.uint8)])
    with pytest.raises(InputError, match="corpus changed"):
        preview.render_preview(run, "dog", tmp_path / "d.gif", frames=frames)
    assert not (tmp_path / "d.gif").exists()


# --- real clip --------------------------------------------------------------------------------


def test_real_annotations_export_to_identical_pngs(real_data_root, tmp_path):
    """A run whose masks are cutie-judo's annotations (4 objects joining over time, sparse
    frames) exports PNGs equal to the annotation files."""
    folder = real_data_root / "Annotations" / "480p" / "cutie-judo"
    frames = {}
    for path in sorted(folder.glob("*.png")):
        labels = read_mask(path)
        if labels.shape == (480, 854):  # 00005.png is 853 wide (see SOURCES.md)
            frames[int(path.stem)] = labels
    assert len(frames) >= 3
    rows = mask_rows(RUN, "judo", frames)
    output = tmp_path / "out"
    ledger.save_plan(str(output), ledger.make_plan(RUN, ["judo"], 1))
    ledger.write_shard(str(output), RUN, "shard-00000", MASKS.table(rows), ERRORS.empty())
    ledger.write_run_record(str(output), RUN, {"config": {"corpus_uri": str(real_data_root)}})
    ledger.mark_success(str(output), RUN)
    run = open_run(f"{output}/runs/{RUN}")
    export.export_run(run, "davis", tmp_path / "davis")
    for index, labels in frames.items():
        np.testing.assert_array_equal(
            read_mask(tmp_path / "davis" / "judo" / f"{index:05d}.png"), labels
        )
    table = table_io.read_table(run.layout.masks_file("shard-00000"))
    assert pc.max(table["object_id"]).as_py() == 4
