"""stm_core.io and stm_core.codec: the palette, single frames and masks, bad input.

Finding the videos of a folder is pipeline.corpus's (tests/unit/test_corpus_folders.py).

Expected numbers come from /work/shared/data/real/SOURCES.md (frame counts, annotated frames,
object ids, sizes) or are derived by hand in the test (palette entries, pixel counts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stm_core.codec import decode_frame
from stm_core.errors import InputError
from stm_core.io import (
    DAVIS_PALETTE,
    read_annotations,
    read_frame,
    read_mask,
    write_mask,
)

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
REAL_FRAMES = REAL / "JPEGImages" / "480p"
REAL_MASKS = REAL / "Annotations" / "480p"


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


def test_undecodable_bytes_give_the_same_message_every_time() -> None:
    """Pillow names its in-memory buffer with an address; the errors row of a bad frame must be
    the same in every run, so the address is cut out of the message."""
    messages = set()
    for _ in range(3):
        with pytest.raises(InputError) as info:
            decode_frame(b"not a jpeg", "corpus/00003.jpg")
        messages.add(str(info.value))
    assert messages == {
        "corpus/00003.jpg: is not a readable image "
        "(UnidentifiedImageError: cannot identify image file)"
    }


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


def test_read_annotations_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_annotations(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no masks here")
    with pytest.raises(InputError, match=r"no masks \(\*\.png\)"):
        read_annotations(tmp_path / "empty")


def test_input_errors_survive_pickling() -> None:
    """Ray ships a worker's exception to the driver by pickling it: the type, the file and the
    problem must all arrive."""
    import pickle

    from schemas.tables import TableError

    for error in (
        InputError("corpus/00003.jpg", "is not a readable image"),
        InputError(None, "no source"),
        TableError("masks.parquet", "column 'rle' is missing"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (copy.source, copy.problem, str(copy)) == (error.source, error.problem, str(error))
