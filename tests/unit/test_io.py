"""stm_core.io against the real DAVIS-layout clips, a YouTube-VOS tree built here, and bad input.

Expected numbers come from /work/shared/data/real/SOURCES.md (frame counts, annotated frames,
object ids, sizes) or are derived by hand in the test (palette entries, pixel counts).
"""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stm_core.errors import InputError
from stm_core.io import (
    DAVIS_PALETTE,
    find_layout,
    frame_size,
    iter_frames,
    list_videos,
    read_annotations,
    read_frame,
    read_mask,
    read_seeds,
    video_from_dirs,
    write_mask,
)

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
    return video_from_dirs(REAL_FRAMES / name, REAL_MASKS / name)


def _write_frame(path: Path, height: int, width: int, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


# --- palette and single-file codecs ---------------------------------------------------------


def test_palette_entries_derived_by_hand() -> None:
    # index bits b0,b1,b2 -> top bit of R,G,B; b3,b4,b5 -> next bit; b6,b7 -> third bit of R,G.
    expected = {
        0: (0, 0, 0),
        1: (128, 0, 0),
        2: (0, 128, 0),
        3: (128, 128, 0),
        4: (0, 0, 128),
        5: (128, 0, 128),
        7: (128, 128, 128),
        8: (64, 0, 0),
        9: (192, 0, 0),
        64: (32, 0, 0),
        255: (224, 224, 192),
    }
    assert isinstance(DAVIS_PALETTE, bytes) and len(DAVIS_PALETTE) == 768
    for index, rgb in expected.items():
        assert tuple(DAVIS_PALETTE[3 * index : 3 * index + 3]) == rgb, index


def test_palette_equals_the_one_in_real_davis2017_masks() -> None:
    # Independent reference: the palettes stored in masks made by the XMem++ and Cutie authors.
    for mask in ("xmem2-caps/00000.png", "cutie-judo/00000.png"):
        with Image.open(REAL_MASKS / mask) as image:
            assert bytes(image.getpalette()) == DAVIS_PALETTE, mask


def test_write_then_read_mask_round_trip(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 6, size=(7, 9), dtype=np.uint8)
    labels[0, 0], labels[0, 1] = 1, 255
    path = tmp_path / "new" / "deeper" / "00000.png"  # parents do not exist yet
    write_mask(path, labels)
    back = read_mask(path)
    assert back.dtype == np.uint8 and back.shape == (7, 9)
    np.testing.assert_array_equal(back, labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert bytes(image.getpalette()) == DAVIS_PALETTE
        rgb = image.convert("RGB")
        assert rgb.getpixel((0, 0)) == (128, 0, 0)  # id 1, (x, y) = (0, 0)
        assert rgb.getpixel((1, 0)) == (224, 224, 192)  # id 255
    assert [p.name for p in path.parent.iterdir()] == ["00000.png"]  # no temp file left


def test_write_mask_accepts_bool_and_wide_ints(tmp_path: Path) -> None:
    write_mask(tmp_path / "b.png", np.eye(3, dtype=bool))
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), np.eye(3, dtype=np.uint8))
    write_mask(tmp_path / "i.png", np.array([[0, 200]], dtype=np.int64))
    np.testing.assert_array_equal(read_mask(tmp_path / "i.png"), [[0, 200]])


@pytest.mark.parametrize(
    ("name", "labels", "needle"),
    [
        ("m.png", np.array([[0, 256]]), "0..255"),
        ("m.png", np.array([[-1, 0]]), "0..255"),
        ("m.png", np.zeros((2, 2, 1), np.uint8), "H x W"),
        ("m.png", np.zeros((2, 2), np.float32), "dtype"),
        ("m.jpg", np.zeros((2, 2), np.uint8), ".png"),
    ],
)
def test_write_mask_rejects_bad_labels(
    tmp_path: Path, name: str, labels: np.ndarray, needle: str
) -> None:
    with pytest.raises(InputError, match=needle.replace(".", r"\.")) as info:
        write_mask(tmp_path / name, labels)
    assert info.value.source == str(tmp_path / name)
    assert not (tmp_path / name).exists()


def test_greyscale_0_255_is_one_object(tmp_path: Path) -> None:
    grey = np.zeros((4, 5), np.uint8)
    grey[1:3, 2:4] = 255
    Image.fromarray(grey).save(tmp_path / "g.png")
    labels = read_mask(tmp_path / "g.png")
    np.testing.assert_array_equal(labels, (grey == 255).astype(np.uint8))
    assert set(np.unique(labels)) == {0, 1}


def test_greyscale_small_values_are_ids_and_mixed_255_is_rejected(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    Image.fromarray(ids).save(tmp_path / "ids.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "ids.png"), ids)
    Image.fromarray(np.array([[0, 128, 255]], np.uint8)).save(tmp_path / "soft.png")
    with pytest.raises(InputError, match=r"soft\.png: greyscale mask with values \{0, 128, 255\}"):
        read_mask(tmp_path / "soft.png")


def test_bilevel_and_16_bit_masks(tmp_path: Path) -> None:
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "one.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "one.png"), [[1, 0]])
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "wide.png"), [[0, 1]])


def test_rgb_mask_in_davis_colours_maps_back_to_ids(tmp_path: Path) -> None:
    # (128,0,0) is id 1, (0,128,0) id 2, (64,0,0) id 8: from the palette construction.
    rgb = np.array([[[0, 0, 0], [128, 0, 0]], [[0, 128, 0], [64, 0, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), [[0, 1], [2, 8]])
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(InputError, match=r"odd\.png: .*not in the DAVIS palette.*\(1, 2, 3\)"):
        read_mask(tmp_path / "odd.png")


def test_real_binary_mask_reads_as_ids_0_1() -> None:
    path = REAL_MASKS / "blackswan" / "00000.png"
    with Image.open(path) as image:
        raw = np.array(image)
    labels = read_mask(path)
    assert labels.shape == (480, 854)
    assert set(np.unique(labels)) == {0, 1}
    assert int(labels.sum()) == int((raw == 255).sum()) > 0


def test_real_palette_masks_give_the_ids_in_sources_md() -> None:
    caps = REAL_MASKS / "xmem2-caps"
    assert set(np.unique(read_mask(caps / "00000.png"))) == {0, 1}
    assert set(np.unique(read_mask(caps / "00033.png"))) == {0, 1, 2}  # cap 2 appears here
    judo = read_annotations(REAL_MASKS / "cutie-judo")
    assert list(judo) == ["00000", "00005", "00008", "00013"]
    assert {k: set(np.unique(v)) for k, v in judo.items()} == {
        "00000": {0, 1},
        "00005": {0, 2},
        "00008": {0, 3},
        "00013": {0, 4},
    }


def test_read_frame_is_rgb_uint8_for_any_mode(tmp_path: Path) -> None:
    frame = read_frame(REAL_FRAMES / "cutie-bike" / "00000.jpg")
    assert frame.shape == (480, 854, 3) and frame.dtype == np.uint8
    Image.fromarray(np.array([[10, 20, 30]], np.uint8)).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_frame(tmp_path / "grey.png")[0, :, 1], [10, 20, 30])
    Image.new("RGBA", (2, 3), (5, 6, 7, 0)).save(tmp_path / "rgba.png")
    rgba = read_frame(tmp_path / "rgba.png")
    assert rgba.shape == (3, 2, 3) and tuple(rgba[0, 0]) == (5, 6, 7)


# --- corrupt files ------------------------------------------------------------------------------


def test_random_bytes_jpg_is_not_a_readable_image(tmp_path: Path) -> None:
    bad = tmp_path / "00000.jpg"
    bad.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(InputError, match="is not a readable image") as info:
        read_frame(bad)
    assert info.value.source == str(bad)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_real_jpeg_is_not_a_readable_image(tmp_path: Path, keep: float) -> None:
    data = (REAL_FRAMES / "blackswan" / "00000.jpg").read_bytes()
    bad = tmp_path / "00000.jpg"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match=r"00000\.jpg: is not a readable image.*truncated"):
        read_frame(bad)


def test_text_file_named_png(tmp_path: Path) -> None:
    bad = tmp_path / "00003.png"
    bad.write_text("this is not a PNG\n")
    with pytest.raises(InputError, match=r"00003\.png: is not a readable mask image"):
        read_mask(bad)
    with pytest.raises(InputError, match=r"00003\.png: is not a readable image"):
        read_frame(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_frame(tmp_path / "nope.jpg")
    with pytest.raises(InputError, match="does not exist"):
        read_mask(tmp_path / "nope.png")


# --- the real DAVIS-layout data -----------------------------------------------------------------


def test_real_data_layout_and_counts() -> None:
    layout = find_layout(REAL)
    assert layout.kind == "davis"
    assert layout.frames_root == REAL_FRAMES and layout.masks_root == REAL_MASKS
    videos = list_videos(REAL)
    assert [v.name for v in videos] == sorted(REAL_COUNTS)
    counts = {v.name: (len(v.frame_paths), len(v.mask_paths)) for v in videos}
    assert counts == REAL_COUNTS
    for video in videos:  # every mask sits on the frame with its stem
        names = video.frame_names()
        assert all(names[i] == p.stem for i, p in video.mask_paths.items())
        assert names[0] == "00000" and len(video) == len(names)


def test_real_sparse_annotations_and_portrait_size() -> None:
    caps = _real_video("xmem2-caps")
    assert caps.annotated_frames() == (0, 14, 33, 43, 66)
    assert caps.frame_index("00066") == 66
    assert frame_size(caps) == (853, 480)  # (height, width): 480 wide x 853 high
    first = next(iter_frames(caps))
    assert first.shape == (853, 480, 3)
    seeds = read_seeds(caps, frame_size(caps))
    assert sorted(seeds) == [0, 14, 33, 43, 66]
    assert all(m.shape == (853, 480) for m in seeds.values())


def test_real_judo_mismatch_is_rejected_naming_file_and_sizes() -> None:
    judo = _real_video("cutie-judo")
    with pytest.raises(InputError) as info:
        read_seeds(judo, (480, 854))
    assert info.value.source.endswith("00005.png")
    message = str(info.value)
    assert "00005.png" in message and "853x480" in message and "854x480" in message


def test_real_judo_resize_option(caplog: pytest.LogCaptureFixture) -> None:
    judo = _real_video("cutie-judo")
    original = read_mask(judo.mask_paths[5])
    assert original.shape == (480, 853)
    with caplog.at_level(logging.WARNING, logger="stm_core.io"):
        seeds = read_seeds(judo, (480, 854), resize_mismatched=True)
    assert sorted(seeds) == [0, 5, 8, 13]
    assert all(m.shape == (480, 854) for m in seeds.values())
    assert set(np.unique(seeds[5])) == {0, 2}  # nearest: no new ids
    # one column is duplicated: the area grows by at most one column's worth (480 px)
    grown = int((seeds[5] == 2).sum()) - int((original == 2).sum())
    assert 0 <= grown <= 480
    np.testing.assert_array_equal(seeds[0], read_mask(judo.mask_paths[0]))  # untouched
    assert any("00005.png" in r.getMessage() for r in caplog.records)


def test_iter_frames_is_a_stream() -> None:
    bike = _real_video("cutie-bike")
    frames = iter_frames(bike)
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
    layout = find_layout(tmp_path)
    assert layout.kind == "youtube-vos"
    assert layout.frames_root == tmp_path / "JPEGImages"
    with caplog.at_level(logging.WARNING, logger="stm_core.io"):
        videos = list_videos(tmp_path)
    assert "gone" in caplog.text
    assert [v.name for v in videos] == ["a0ff", "b1c2"]
    a0ff, b1c2 = videos
    assert a0ff.frame_names() == ("00000", "00005") and a0ff.mask_paths == {}
    assert b1c2.frame_names() == ("00000", "00005", "00010", "00015")
    assert b1c2.annotated_frames() == (0, 2)  # indices are positions, not the numbers in names
    seeds = read_seeds(b1c2, frame_size(b1c2))
    assert set(np.unique(seeds[0])) == {0, 1} and set(np.unique(seeds[2])) == {0, 1, 2}
    assert int((seeds[2] == 2).sum()) == 2 * 3  # rows 4..5, columns 5..7


def test_youtube_vos_without_annotations_folder(tmp_path: Path) -> None:
    _write_frame(tmp_path / "JPEGImages" / "only" / "00000.jpg", 4, 4)
    layout = find_layout(tmp_path)
    assert layout.kind == "youtube-vos" and layout.masks_root is None
    assert list_videos(tmp_path)[0].mask_paths == {}


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        find_layout(tmp_path / "missing")
    with pytest.raises(InputError, match="has no JPEGImages folder"):
        find_layout(tmp_path)
    _write_frame(tmp_path / "JPEGImages" / "Full-Resolution" / "seq" / "00000.jpg", 4, 4)
    with pytest.raises(InputError, match="no '480p' folder.*Full-Resolution"):
        find_layout(tmp_path)
    assert find_layout(tmp_path, resolution="Full-Resolution").kind == "davis"


# --- folders and streams: bad input -------------------------------------------------------------


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        video_from_dirs(tmp_path / "missing")
    assert info.value.source == str(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    with pytest.raises(InputError, match=r"no frames \(\*\.jpg, \*\.jpeg, \*\.png\)"):
        video_from_dirs(tmp_path / "empty")
    _write_frame(tmp_path / "ok" / "00000.jpg", 4, 4)
    with pytest.raises(InputError, match="does not exist"):
        video_from_dirs(tmp_path / "ok", tmp_path / "no-masks")
    with pytest.raises(InputError, match="does not exist"):
        read_annotations(tmp_path / "missing")
    with pytest.raises(InputError, match=r"no masks \(\*\.png\)"):
        read_annotations(tmp_path / "empty")


def test_mask_with_no_frame(tmp_path: Path) -> None:
    _write_frame(tmp_path / "f" / "00000.jpg", 4, 4)
    write_mask(tmp_path / "m" / "00000.png", np.zeros((4, 4), np.uint8))
    write_mask(tmp_path / "m" / "00007.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="mask has no frame named 00007") as info:
        video_from_dirs(tmp_path / "f", tmp_path / "m")
    assert info.value.source == str(tmp_path / "m" / "00007.png")


def test_two_frames_with_one_stem(tmp_path: Path) -> None:
    _write_frame(tmp_path / "00000.jpg", 4, 4)
    _write_frame(tmp_path / "00000.png", 4, 4)
    with pytest.raises(InputError, match="same name"):
        video_from_dirs(tmp_path)


def test_frames_sorted_by_name_with_numbers_compared_as_numbers(tmp_path: Path) -> None:
    for stem in ("frame_10", "frame_2", "frame_1"):
        _write_frame(tmp_path / f"{stem}.png", 3, 3)
    _write_frame(tmp_path / "frame_3.JPEG", 3, 3)  # upper-case suffix counts too
    video = video_from_dirs(tmp_path, name="clip")
    assert video.name == "clip"
    assert video.frame_names() == ("frame_1", "frame_2", "frame_3", "frame_10")


def test_frame_of_another_size_fails_when_reached(tmp_path: Path) -> None:
    for i, height in enumerate((6, 6, 7, 6)):
        _write_frame(tmp_path / f"{i:05d}.jpg", height, 8)
    video = video_from_dirs(tmp_path)
    frames = iter_frames(video)
    assert next(frames).shape == (6, 8, 3)
    assert next(frames).shape == (6, 8, 3)
    with pytest.raises(InputError) as info:
        next(frames)
    assert info.value.source == str(tmp_path / "00002.jpg")
    assert "8x7" in str(info.value) and "8x6" in str(info.value)


def test_expected_size_applies_to_the_first_frame(tmp_path: Path) -> None:
    _write_frame(tmp_path / "00000.jpg", 6, 8)
    with pytest.raises(InputError, match=r"00000\.jpg: frame size 8x6 .* video's 9x6"):
        list(iter_frames(video_from_dirs(tmp_path), expected_size=(6, 9)))


def test_corrupt_frame_mid_video_fails_when_reached(tmp_path: Path) -> None:
    _write_frame(tmp_path / "00000.jpg", 4, 4)
    (tmp_path / "00001.jpg").write_bytes(b"\xff\xd8\xff garbage")
    frames = iter_frames(video_from_dirs(tmp_path))
    assert next(frames).shape == (4, 4, 3)
    with pytest.raises(InputError, match=r"00001\.jpg: is not a readable image"):
        next(frames)


def test_corrupt_seed_mask_is_named(tmp_path: Path) -> None:
    _write_frame(tmp_path / "f" / "00000.jpg", 4, 4)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "00000.png").write_text("not an image")
    video = video_from_dirs(tmp_path / "f", tmp_path / "m")
    with pytest.raises(InputError, match=r"m/00000\.png: is not a readable mask image"):
        read_seeds(video, (4, 4))
