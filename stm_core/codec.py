"""Encoded bytes -> arrays: frames, label-map PNGs, sizes. No files, no filesystems.

Why a module of its own: the same decoding rules must hold wherever bytes come from (a local
file in :mod:`stm_core.io`, an object store read through fsspec by ``pipeline.corpus``), so both
call these functions and neither reaches into the other's private names.

Conventions (they match numpy, not Pillow): a frame is an ``H x W x 3`` uint8 RGB array, a label
map an ``H x W`` uint8 array whose value is the object id (0 = background); a size is
``(height, width)``; messages spell sizes ``WxH`` (:func:`size_text`). ``source`` names the file
(or frame) in every :class:`~stm_core.errors.InputError`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError

__all__ = [
    "DAVIS_PALETTE",
    "DECODE_ERRORS",
    "FRAME_SUFFIXES",
    "MASK_SUFFIX",
    "decode_frame",
    "decode_label_map",
    "image_size",
    "label_map_from_image",
    "natural_key",
    "resize_labels",
    "size_text",
    "unreadable",
]

Size = tuple[int, int]  # (height, width) in pixels

FRAME_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".png"

#: Anything Pillow raises on bytes that are not a (complete) image: UnidentifiedImageError and
#: "image file is truncated" are OSErrors; some decoders raise SyntaxError, ValueError or EOFError.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
)


def _davis_palette() -> bytes:
    """The DAVIS / PASCAL VOC palette: the bits of index i are dealt out to R, G, B in turn.

    Bit 0 of i goes to the top bit of R, bit 1 to the top bit of G, bit 2 to the top bit of B,
    bit 3 to the next bit of R, and so on, so 1 -> (128, 0, 0), 2 -> (0, 128, 0), 8 -> (64, 0, 0).
    Returns 256 * 3 bytes, R G B per index.
    """
    out = bytearray()
    for index in range(256):
        rgb = [0, 0, 0]
        rest = index
        for bit in range(7, -1, -1):  # fill from the most significant bit down
            for channel in range(3):
                rgb[channel] |= (rest & 1) << bit
                rest >>= 1
        out.extend(rgb)
    return bytes(out)


DAVIS_PALETTE: bytes = _davis_palette()

# Packed 0xRRGGBB colour -> index, to map RGB masks drawn with the DAVIS palette back to ids.
_PALETTE_INDEX: dict[int, int] = {
    (DAVIS_PALETTE[3 * i] << 16) | (DAVIS_PALETTE[3 * i + 1] << 8) | DAVIS_PALETTE[3 * i + 2]: i
    for i in range(256)
}


DAVIS_PALETTE: bytes = _davis_palette()

# Packed 0xRRGGBB colour -> index, to map RGB masks drawn with the DAVIS palette back to ids.
_PALETTE_INDEX: dict[int, int] = {
    (DAVIS_PALETTE[3 * i] << 16) | (DAVIS_PALETTE[3 * i + 1] << 8) | DAVIS_PALETTE[3 * i + 2]: i
    for i in range(256)
}


def size_text(size: Size) -> str:
    """``(height, width)`` as the ``WxH`` text used in messages."""
    return f"{size[1]}x{size[0]}"


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that compares runs of digits as numbers: ``2.jpg`` before ``10.jpg``.

    Zero-padded names (DAVIS, YouTube-VOS) sort exactly as plain string order; unpadded names
    (``frame_1 .. frame_10``) would not, and a wrong frame order would silently corrupt a video.
    Use this key wherever frame order must agree with the frame folders the pipeline lists.
    """
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


# ---------------------------------------------------------------------------------------------
# frames


#: Pillow names the in-memory buffer in some messages ("cannot identify image file <_io.BytesIO
#: object at 0x7f...>"): an address that differs on every run would make the same bad file give a
#: different errors row each time, so it is cut out.
_OBJECT_ADDRESS = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def unreadable(source: str | Path, what: str, exc: BaseException) -> InputError:
    """The error for bytes that do not decode as ``what`` (``"image"``, ``"mask"``), naming the
    decoder's exception and its message, the same on every run."""
    message = _OBJECT_ADDRESS.sub("", str(exc))
    return InputError(source, f"is not a readable {what} ({type(exc).__name__}: {message})")


def _open(data: bytes, source: str | Path, what: str) -> Image.Image:
    """Open and fully decode ``data`` (a truncated file only fails while decoding)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except DECODE_ERRORS as exc:
        raise unreadable(source, what, exc) from None
    return image


def decode_frame(data: bytes, source: str | Path, size: Size | None = None) -> np.ndarray:
    """An encoded image -> ``H x W x 3`` uint8 RGB.

    Any mode (greyscale, palette, RGBA, CMYK) is converted to RGB; alpha is dropped. EXIF
    orientation is deliberately not applied: masks are drawn on the stored pixel grid. ``size``
    (height, width), if given and different, resizes with area averaging (the working size of a
    large video). Truncation is only detected while Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES``
    is False, its default.
    """
    with _open(data, source, "image") as image:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if size is not None and (rgb.height, rgb.width) != tuple(size):
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.BOX)
        return np.array(rgb, dtype=np.uint8)


def image_size(data: bytes, source: str | Path) -> Size:
    """``(height, width)`` of an encoded image from its header only (no decoding)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.height, image.width
    except DECODE_ERRORS as exc:
        raise unreadable(source, "image", exc) from None


# ---------------------------------------------------------------------------------------------
# label maps


def decode_label_map(data: bytes, source: str | Path) -> np.ndarray:
    """An encoded mask -> ``H x W`` uint8 label map, by the rules of
    :func:`label_map_from_image`."""
    with _open(data, source, "mask image") as image:
        return label_map_from_image(image, source)


def label_map_from_image(image: Image.Image, path: str | Path) -> np.ndarray:
    """The label map of an opened, decoded mask image.

    - palette ``P`` PNG (DAVIS 2017, YouTube-VOS): the pixel indices, whatever the palette;
    - greyscale ``L`` / ``1`` / 16-bit: ``{0, 255}`` (or ``{0, 65535}``) is one object, id 1;
      other values below the maximum are taken as ids (see :func:`_grey_to_labels`);
    - ``RGB`` / ``RGBA``: colours of :data:`DAVIS_PALETTE` are mapped back to their indices
      (alpha ignored); any other colour is rejected with the colour named.

    Other modes raise InputError naming ``path``.
    """
    mode = image.mode
    if mode == "P":
        return np.array(image, dtype=np.uint8)
    if mode == "1":
        return np.asarray(image).astype(np.uint8)
    if mode == "L":
        return _grey_to_labels(np.asarray(image), 255, path)
    if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNGs open as one of these
        return _grey_to_labels(np.asarray(image).astype(np.int64), 65535, path)
    if mode in ("RGB", "RGBA"):
        return _rgb_to_labels(np.asarray(image)[..., :3], path)
    raise InputError(path, f"mask has unsupported image mode {mode!r}; expected a palette PNG")


def _grey_to_labels(values: np.ndarray, full: int, path: str | Path) -> np.ndarray:
    """Greyscale mask -> label map.

    ``{0, full}`` (DAVIS 2016: 255 is the object) is one object; values all below ``full`` and at
    most 255 are object ids as they are. ``full`` mixed with other non-zero values is ambiguous (a
    soft-edged binary mask? ids?) and is rejected rather than guessed.
    """
    present = np.unique(values)
    if np.all((present == 0) | (present == full)):
        return (values > 0).astype(np.uint8)
    top_id = min(full - 1, 255)
    if int(present.max()) <= top_id:
        return values.astype(np.uint8)
    shown = ", ".join(str(int(v)) for v in present[:8]) + (", ..." if present.size > 8 else "")
    raise InputError(
        path,
        f"greyscale mask with values {{{shown}}} is neither binary {{0, {full}}} nor object ids "
        f"0..{top_id}; save it as a palette PNG (see stm_core.io.write_mask)",
    )


def _rgb_to_labels(rgb: np.ndarray, path: str | Path) -> np.ndarray:
    """RGB mask drawn with DAVIS_PALETTE colours -> label map; any other colour is an error."""
    packed = (
        (rgb[..., 0].astype(np.uint32) << 16)
        | (rgb[..., 1].astype(np.uint32) << 8)
        | rgb[..., 2].astype(np.uint32)
    )
    colours, inverse = np.unique(packed, return_inverse=True)
    unknown = [int(c) for c in colours if int(c) not in _PALETTE_INDEX]
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:3])
        raise InputError(
            path,
            f"RGB mask has {len(unknown)} colour(s) not in the DAVIS palette, e.g. {shown}; "
            "save masks as palette ('P') PNGs whose pixel values are object ids",
        )
    lut = np.array([_PALETTE_INDEX[int(c)] for c in colours], dtype=np.uint8)
    return lut[inverse.reshape(packed.shape)]


def resize_labels(labels: np.ndarray, size: Size) -> np.ndarray:
    """A label map at ``(height, width)`` by nearest neighbour: ids are never blended."""
    if labels.shape[:2] == tuple(size):
        return labels
    image = Image.fromarray(labels)
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.NEAREST)).copy()
