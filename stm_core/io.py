"""Frames and masks as local files: one image in, one palette PNG out, a folder of masks.

Conventions used throughout (they match numpy, not Pillow):

- a frame is an ``H x W x 3`` uint8 RGB array, a label map an ``H x W`` uint8 array whose value
  is the object id (0 = background);
- a size is ``(height, width)`` in pixels; error messages spell sizes out as ``WxH (width x
  height)`` because that is how image viewers and dataset notes report them;
- a frame index is the position of the frame in its folder's name order, not the number in its
  file name (YouTube-VOS names every 5th frame ``00000, 00005, ...``; they get indices 0, 1, ...).

The decoding rules are :mod:`stm_core.codec`'s; finding the videos of a dataset or corpus and
streaming their frames is ``pipeline.corpus``'s (local paths are fsspec paths there too). Every
problem with the input raises :class:`~stm_core.errors.InputError` naming the file or folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .codec import (
    DAVIS_PALETTE,
    DECODE_ERRORS,
    FRAME_SUFFIXES,
    MASK_SUFFIX,
    decode_frame,
    decode_label_map,
    natural_key,
    unreadable,
)
from .errors import InputError

__all__ = [
    "DAVIS_PALETTE",
    "FRAME_SUFFIXES",
    "natural_key",
    "read_annotations",
    "read_frame",
    "read_frame_size",
    "read_mask",
    "write_mask",
]


Size = tuple[int, int]  # (height, width) in pixels

# ---------------------------------------------------------------------------------------------
# single files


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "does not exist")
    if not path.is_file():
        raise InputError(path, "is not a file")


def _read_bytes(path: Path) -> bytes:
    _require_file(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read ({type(exc).__name__}: {exc})") from None


def read_frame(path: str | Path) -> np.ndarray:
    """Read one video frame as an ``H x W x 3`` uint8 RGB array (the rules of
    :func:`stm_core.codec.decode_frame`). A missing, corrupt, truncated or non-image file
    raises InputError naming it."""
    path = Path(path)
    return decode_frame(_read_bytes(path), path)


def read_frame_size(path: str | Path) -> Size:
    """``(height, width)`` of an image from its header only (no decoding)."""
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except DECODE_ERRORS as exc:
        raise unreadable(path, "image", exc) from None
    return height, width


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints and training shards are
    tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_mask(path: str | Path) -> np.ndarray:
    """Read an annotation as an ``H x W`` uint8 label map (0 = background, k = object k), by
    :func:`stm_core.codec.label_map_from_image`'s rules (palette indices are ids; greyscale
    ``{0, 255}`` is object 1; RGB in DAVIS palette colours). Unreadable files and unsupported
    modes raise InputError naming the file."""
    path = Path(path)
    return decode_label_map(_read_bytes(path), path)


def write_mask(path: str | Path, labels: np.ndarray) -> None:
    """Write an ``H x W`` label map (ids 0..255) as a palette PNG coloured with DAVIS_PALETTE.

    Parent folders are created. The file is written under a temporary name and renamed, so a
    crash never leaves a half-written PNG where a reader would find it.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if path.suffix.lower() != MASK_SUFFIX:
        raise InputError(path, f"mask files must end in {MASK_SUFFIX}")
    if labels.ndim != 2:
        raise InputError(path, f"labels must be H x W, got shape {labels.shape}")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(path, f"labels must be integer object ids, got dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise InputError(
            path,
            f"object ids must be in 0..255, got {int(labels.min())}..{int(labels.max())}",
        )
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(DAVIS_PALETTE)  # turns the 'L' image into 'P' with the same indices
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# a folder of masks


def _require_dir(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "does not exist")
    if not path.is_dir():
        raise InputError(path, "is not a folder")


def _files_with_suffix(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files in ``folder`` ending in one of ``suffixes`` (any case), hidden files skipped."""
    found = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(found, key=lambda p: natural_key(p.name))


def read_annotations(masks_dir: str | Path) -> dict[str, np.ndarray]:
    """File stem -> ``H x W`` uint8 label map for every ``*.png`` in ``masks_dir`` (name order).

    Meant for evaluation folders of ground truth or predictions, where masks need no frames.
    """
    masks_dir = Path(masks_dir)
    _require_dir(masks_dir)
    masks = _files_with_suffix(masks_dir, (MASK_SUFFIX,))
    if not masks:
        raise InputError(masks_dir, f"no masks (*{MASK_SUFFIX})")
    return {p.stem: read_mask(p) for p in masks}
