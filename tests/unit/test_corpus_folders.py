"""pipeline.corpus on local dataset folders and single frame folders: the layout rules, frame
streams and seed masks that evaluation, training and the CLI read (local paths are fsspec paths).

Expected numbers come from /work/shared/data/real/SOURCES.md (frame counts, annotated frames,
sizes) or are derived by hand in the test.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.corpus import discover_dataset, folder_video, iter_frames, probe, read_seeds
from stm_core.errors import InputError
from stm_core.io import read_mask, write_mask

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
REAL_FRAMES = REAL / "JPEGImages" / "480p"
REAL_MASKS = REAL / "Annotations" / "480p"

# SOURCES.md, "Summary": frames and annotated frames per sequence.
REAL_COUNTS = {
    "blackswan": (50, 50),
    "car-shadow": (40, 40),
    "libby": (49, 49),
    "kite-surf": (50, 50),
    "horsejump-high": (50, 50),
    "xmem2-chair": (60, 60),
    "xmem2-caps": (87, 5),
    "cutie-judo": (16, 4),
    "cutie-bike": (4, 1),
}


def _real_video(name: str):
    return folder_video(str(REAL_FRAMES / name), str(REAL_MASKS / name))


def _write_frame(path: Path, height: int, width: int, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


# --- the real DAVIS-layout data -----------------------------------------------------------------


def test_real_data_layout_and_counts() -> None:
    dataset = discover_dataset(str(REAL))
    assert dataset.unannotated == []
    assert [t.video_id for t in dataset.tasks] == sorted(REAL_COUNTS)
    counts = {t.video_id: (t.num_frames, len(t.seeds.frames)) for t in dataset.tasks}
    assert counts == REAL_COUNTS
    for task in dataset.tasks:  # every mask sits on the frame with its stem
        names = task.frame_names
        assert all(names[i] == Path(f).stem for i, f in task.seeds.mask_files)
        assert names[0] == "00000"
        assert task.seeds.uri.endswith(f"Annotations/480p/{task.video_id}")


def test_real_sparse_annotations_and_portrait_size() -> None:
    caps, fs = _real_video("xmem2-caps")
    assert caps.seeds.frames == (0, 14, 33, 43, 66)
    assert caps.frame_names.index("00066") == 66
    info = probe(caps, fs)
    assert info.size == (853, 480) and info.num_frames == 87  # 480 wide x 853 high
    first = next(iter_frames(caps, fs))
    assert first.shape == (853, 480, 3)
    seeds = read_seeds(caps, fs, info.size)
    assert sorted(seeds) == [0, 14, 33, 43, 66]
    assert all(m.shape == (853, 480) for m in seeds.values())


def test_real_judo_mismatch_is_rejected_naming_file_and_sizes() -> None:
    judo, fs = _real_video("cutie-judo")
    with pytest.raises(InputError) as info:
        read_seeds(judo, fs, (480, 854))
    assert info.value.source.endswith("00005.png")
    message = str(info.value)
    assert "00005.png" in message and "853x480" in message and "854x480" in message


def test_real_judo_resize_option(caplog: pytest.LogCaptureFixture) -> None:
    judo, fs = _real_video("cutie-judo")
    original = read_mask(REAL_MASKS / "cutie-judo" / "00005.png")
    assert original.shape == (480, 853)
    with caplog.at_level(logging.WARNING, logger="pipeline.corpus.seeds"):
        seeds = read_seeds(judo, fs, (480, 854), resize_mismatched=True)
    assert sorted(seeds) == [0, 5, 8, 13]
    assert all(m.shape == (480, 854) for m in seeds.values())
    assert set(np.unique(seeds[5])) == {0, 2}  # nearest: no new ids
    # one column is duplicated: the area grows by at most one column's worth (480 px)
    grown = int((seeds[5] == 2).sum()) - int((original == 2).sum())
    assert 0 <= grown <= 480
    np.testing.assert_array_equal(seeds[0], read_mask(REAL_MASKS / "cutie-judo" / "00000.png"))
    assert any("00005.png" in r.getMessage() for r in caplog.records)


def test_iter_frames_is_a_stream() -> None:
    bike, fs = _real_video("cutie-bike")
    frames = iter_frames(bike, fs)
    assert isinstance(frames, types.GeneratorType)
    shapes = [f.shape for f in frames]
    assert shapes == [(480, 854, 3)] * 4


# --- YouTube-VOS layout built here --------------------------------------------------------------


def _youtube_tree(root: Path) -> None:
    for name in ("00000", "00005", "00010", "00015"):
        _write_frame(root / "JPEGImages" / "b1c2" / f"{name}.jpg", 6, 8)
    for name in ("00000", "00005"):
        _write_frame(root / "JPEGImages" / "a0ff" / f"{name}.jpg", 5, 4)
    (root / "JPEGImages" / "a0ff" / "._00000.jpg").write_bytes(b"macOS junk")  # hidden: skipped
    first = np.zeros((6, 8), np.uint8)
    first[1:3, 1:3] = 1
    later = first.copy()
    later[4:, 5:] = 2  # object 2 first appears at 00010
    write_mask(root / "Annotations" / "b1c2" / "00000.png", first)
    write_mask(root / "Annotations" / "b1c2" / "00010.png", later)
    write_mask(root / "Annotations" / "gone" / "00000.png", first)  # no frames: skipped


def test_youtube_vos_layout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _youtube_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.corpus.discover"):
        dataset = discover_dataset(str(tmp_path))
    assert "gone" in caplog.text
    assert dataset.unannotated == ["a0ff"]
    (b1c2,) = dataset.tasks
    assert b1c2.video_id == "b1c2"
    assert b1c2.frame_names == ("00000", "00005", "00010", "00015")
    assert b1c2.seeds.frames == (0, 2)  # indices are positions, not the numbers in names
    seeds = read_seeds(b1c2, dataset.fs, probe(b1c2, dataset.fs).size)
    assert set(np.unique(seeds[0])) == {0, 1} and set(np.unique(seeds[2])) == {0, 1, 2}
    assert int((seeds[2] == 2).sum()) == 2 * 3  # rows 4..5, columns 5..7


def test_youtube_vos_without_annotations_folder(tmp_path: Path) -> None:
    _write_frame(tmp_path / "JPEGImages" / "only" / "00000.jpg", 4, 4)
    dataset = discover_dataset(str(tmp_path))
    assert dataset.tasks == [] and dataset.unannotated == ["only"]


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover_dataset(str(tmp_path / "missing"))
    _write_frame(tmp_path / "flat" / "00000.jpg", 4, 4)
    with pytest.raises(InputError, match="has no JPEGImages folder"):
        discover_dataset(str(tmp_path / "flat"))
    root = tmp_path / "davis"
    _write_frame(root / "JPEGImages" / "Full-Resolution" / "seq" / "00000.jpg", 4, 4)
    write_mask(
        root / "Annotations" / "Full-Resolution" / "seq" / "00000.png", np.ones((4, 4), np.uint8)
    )
    with pytest.raises(InputError, match="no '480p' folder.*Full-Resolution"):
        discover_dataset(str(root))
    assert [t.video_id for t in discover_dataset(str(root), "Full-Resolution").tasks] == ["seq"]


def test_an_empty_sequence_folder_is_an_error_not_a_dropped_video(tmp_path: Path) -> None:
    _write_frame(tmp_path / "JPEGImages" / "480p" / "seq" / "00000.jpg", 4, 4)
    write_mask(tmp_path / "Annotations" / "480p" / "seq" / "00000.png", np.ones((4, 4), np.uint8))
    (tmp_path / "JPEGImages" / "480p" / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*no frames"):
        discover_dataset(str(tmp_path))


# --- one frame folder (the CLI's propagate): bad input -------------------------------------------


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        folder_video(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(info.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    with pytest.raises(InputError, match=r"no frames \(\*\.jpg, \*\.jpeg, \*\.png\)"):
        folder_video(str(tmp_path / "empty"))
    _write_frame(tmp_path / "ok" / "00000.jpg", 4, 4)
    with pytest.raises(InputError, match="does not exist"):
        folder_video(str(tmp_path / "ok"), str(tmp_path / "no-masks"))
    (tmp_path / "no-png").mkdir()
    with pytest.raises(InputError, match=r"no seed masks \(\*\.png\)"):
        folder_video(str(tmp_path / "ok"), str(tmp_path / "no-png"))


def test_mask_with_no_frame(tmp_path: Path) -> None:
    _write_frame(tmp_path / "f" / "00000.jpg", 4, 4)
    write_mask(tmp_path / "m" / "00000.png", np.zeros((4, 4), np.uint8))
    write_mask(tmp_path / "m" / "00007.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match=r"m/00007\.png: seed mask names no known frame"):
        folder_video(str(tmp_path / "f"), str(tmp_path / "m"))


def test_two_frames_with_one_stem(tmp_path: Path) -> None:
    _write_frame(tmp_path / "00000.jpg", 4, 4)
    _write_frame(tmp_path / "00000.png", 4, 4)
    with pytest.raises(InputError, match="same name"):
        folder_video(str(tmp_path))


def test_frames_sorted_by_name_with_numbers_compared_as_numbers(tmp_path: Path) -> None:
    for stem in ("frame_10", "frame_2", "frame_1"):
        _write_frame(tmp_path / f"{stem}.png", 3, 3)
    _write_frame(tmp_path / "frame_3.JPEG", 3, 3)  # upper-case suffix counts too
    task, _ = folder_video(str(tmp_path), name="clip")
    assert task.video_id == "clip"
    assert task.frame_names == ("frame_1", "frame_2", "frame_3", "frame_10")


def test_frame_of_another_size_fails_when_reached(tmp_path: Path) -> None:
    for i, height in enumerate((6, 6, 7, 6)):
        _write_frame(tmp_path / f"{i:05d}.jpg", height, 8)
    task, fs = folder_video(str(tmp_path))
    frames = iter_frames(task, fs)
    assert next(frames).shape == (6, 8, 3)
    assert next(frames).shape == (6, 8, 3)
    with pytest.raises(InputError) as info:
        next(frames)
    assert str(tmp_path / "00002.jpg") in info.value.source
    assert "8x7" in str(info.value) and "8x6" in str(info.value)


def test_expected_size_applies_to_the_first_frame(tmp_path: Path) -> None:
    _write_frame(tmp_path / "00000.jpg", 6, 8)
    task, fs = folder_video(str(tmp_path))
    with pytest.raises(InputError, match=r"00000\.jpg .*frame size 8x6 .* differs from 9x6"):
        list(iter_frames(task, fs, expected_size=(6, 9)))


def test_corrupt_frame_mid_video_fails_when_reached(tmp_path: Path) -> None:
    _write_frame(tmp_path / "00000.jpg", 4, 4)
    (tmp_path / "00001.jpg").write_bytes(b"\xff\xd8\xff garbage")
    task, fs = folder_video(str(tmp_path))
    frames = iter_frames(task, fs)
    assert next(frames).shape == (4, 4, 3)
    with pytest.raises(InputError, match=r"00001\.jpg .*is not a readable image"):
        next(frames)


def test_corrupt_seed_mask_is_named(tmp_path: Path) -> None:
    _write_frame(tmp_path / "f" / "00000.jpg", 4, 4)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "00000.png").write_text("not an image")
    task, fs = folder_video(str(tmp_path / "f"), str(tmp_path / "m"))
    with pytest.raises(InputError, match=r"m/00000\.png: is not a readable mask image"):
        read_seeds(task, fs, (4, 4))


# --- records ---------------------------------------------------------------------------------


def test_discovery_stage_names_are_the_errors_tables() -> None:
    from pipeline.corpus import tasks
    from schemas.tables import ERROR_STAGES

    assert {tasks.STAGE_LIST, tasks.STAGE_SEEDS} <= set(ERROR_STAGES)


def test_attaching_seeds_keeps_every_other_field_of_a_task(tmp_path: Path) -> None:
    """Seeds were once attached by rebuilding the task positionally, which dropped its
    corrections; no caller held corrections at that point, but the next one would have."""
    from pipeline.corpus import RleSeed, VideoTask
    from pipeline.corpus.layout import FoundVideos
    from pipeline.corpus.seed_refs import SeedIndex, attach_seeds

    correction = RleSeed(1, 1, 4, 4, b"0")
    task = VideoTask("clip", "frames", "file:///clip", ("a.jpg", "b.jpg"), None, 10, (correction,))
    found = FoundVideos(tasks={"clip": task})
    index = SeedIndex("masks", "file:///seeds", masks={"clip": {"a": "a.png"}})
    (attached,), errors = attach_seeds(found, index)
    assert errors == []
    assert attached.seeds.frames == (0,) and attached.seeds.mask_files == ((0, "a.png"),)
    assert attached.corrections == (correction,) and attached.size_bytes == 10
