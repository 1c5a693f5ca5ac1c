"""Frames and masks on local disk: DAVIS / YouTube-VOS folders in, palette PNGs out.

Conventions used throughout (they match numpy, not Pillow):

- a frame is an ``H x W x 3`` uint8 RGB array, a label map an ``H x W`` uint8 array whose value
  is the object id (0 = background);
- a size is ``(height, width)`` in pixels; error messages spell sizes out as ``WxH (width x
  height)`` because that is how image viewers and dataset notes report them;
- a frame index is the position of the frame in its folder's name order, not the number in its
  file name (YouTube-VOS names every 5th frame ``00000, 00005, ...``; they get indices 0, 1, ...).
  :meth:`VideoFolder.frame_names` keeps the names.

Every problem with the input raises :class:`~stm_core.errors.InputError` naming the file or folder,
so a bad video can become a row in the errors table instead of a stack trace. Nothing here loads a
whole video: :func:`iter_frames` streams one frame at a time.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .errors import InputError

__all__ = [
    "DAVIS_PALETTE",
    "FRAME_SUFFIXES",
    "DatasetLayout",
    "VideoFolder",
    "find_layout",
    "frame_size",
    "iter_frames",
    "list_videos",
    "natural_key",
    "read_annotations",
    "read_frame",
    "read_frame_size",
    "read_mask",
    "read_seeds",
    "video_from_dirs",
    "write_mask",
]

logger = logging.getLogger(__name__)

Size = tuple[int, int]  # (height, width) in pixels

FRAME_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
_FRAME_GLOB_TEXT = "*.jpg, *.jpeg, *.png"
MASK_SUFFIX = ".png"

# Anything Pillow raises on a file that is not a (complete) image: UnidentifiedImageError and
# "image file is truncated" are OSErrors; some decoders raise SyntaxError, ValueError or EOFError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


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


def _wh(size: Size) -> str:
    """``(height, width)`` as the ``WxH`` text used in messages."""
    return f"{size[1]}x{size[0]}"


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that compares runs of digits as numbers: ``2.jpg`` before ``10.jpg``.

    Zero-padded names (DAVIS, YouTube-VOS) sort exactly as plain string order; unpadded names
    (``frame_1 .. frame_10``) would not, and a wrong frame order would silently corrupt a video.
    Use this key wherever frame order must agree with :func:`video_from_dirs`.
    """
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


# ---------------------------------------------------------------------------------------------
# single files


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "does not exist")
    if not path.is_file():
        raise InputError(path, "is not a file")


@contextmanager
def _decoded(path: Path, what: str) -> Iterator[Image.Image]:
    """Open and fully decode ``path``, closing the file afterwards.

    Only opening and decoding are guarded: a file that is not a complete image raises InputError
    naming it; errors raised by the caller's block pass through unchanged.
    """
    _require_file(path)
    try:
        image = Image.open(path)
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"is not a readable {what} ({type(exc).__name__}: {exc})") from None
    try:
        try:
            image.load()  # decode now: a truncated file only fails here
        except _DECODE_ERRORS as exc:
            raise InputError(
                path, f"is not a readable {what} ({type(exc).__name__}: {exc})"
            ) from None
        yield image
    finally:
        image.close()


def read_frame(path: str | Path) -> np.ndarray:
    """Read one video frame as an ``H x W x 3`` uint8 RGB array.

    Any mode (greyscale, palette, RGBA, CMYK) is converted to RGB; alpha is dropped. EXIF
    orientation is deliberately not applied: masks are drawn on the stored pixel grid.
    A missing, corrupt, truncated or non-image file raises InputError naming it. (Truncation is
    only detected while Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False, its default.)
    """
    with _decoded(Path(path), "image") as image:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return np.array(rgb, dtype=np.uint8)


def read_frame_size(path: str | Path) -> Size:
    """``(height, width)`` of an image from its header only (no decoding)."""
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"is not a readable image ({type(exc).__name__}: {exc})") from None
    return height, width


def _grey_to_labels(values: np.ndarray, full: int, path: Path) -> np.ndarray:
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


def _rgb_to_labels(rgb: np.ndarray, path: Path) -> np.ndarray:
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


def read_mask(path: str | Path) -> np.ndarray:
    """Read an annotation as an ``H x W`` uint8 label map (0 = background, k = object k).

    - palette ``P`` PNG (DAVIS 2017, YouTube-VOS): the pixel indices, whatever the palette;
    - greyscale ``L`` / ``1`` / 16-bit: ``{0, 255}`` (or ``{0, 65535}``) is one object, id 1;
      other values below the maximum are taken as ids (see :func:`_grey_to_labels`);
    - ``RGB`` / ``RGBA``: colours of :data:`DAVIS_PALETTE` are mapped back to their indices
      (alpha ignored); any other colour is rejected with the colour named.

    Other modes and unreadable files raise InputError naming the file.
    """
    path = Path(path)
    with _decoded(path, "mask image") as image:
        return _labels_from_image(image, path)


def _labels_from_image(image: Image.Image, path: Path) -> np.ndarray:
    """The label map of an opened mask; see :func:`read_mask` for the rules per mode."""
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
# one video


@dataclass(frozen=True)
class VideoFolder:
    """One video on disk: its frames in order and the annotated frames' masks.

    ``frame_paths[i]`` is frame i; ``mask_paths[i]`` is the annotation of frame i, present only
    for annotated frames (DAVIS: all or some; YouTube-VOS: a few; none is allowed).
    """

    name: str
    frame_paths: tuple[Path, ...]
    mask_paths: dict[int, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [i for i in self.mask_paths if not 0 <= i < len(self.frame_paths)]
        if bad:
            raise InputError(self.name, f"mask frame indices {sorted(bad)} are out of range")

    def __len__(self) -> int:
        return len(self.frame_paths)

    def frame_names(self) -> tuple[str, ...]:
        """File stems of the frames in order (``00000``, ...): the names stored with each mask."""
        return tuple(p.stem for p in self.frame_paths)

    def annotated_frames(self) -> tuple[int, ...]:
        """Indices of the frames that have a mask, ascending."""
        return tuple(sorted(self.mask_paths))

    def frame_index(self, name: str) -> int:
        """Index of the frame whose stem is ``name``."""
        try:
            return self.frame_names().index(name)
        except ValueError:
            raise InputError(self.name, f"no frame named {name!r}") from None


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


def video_from_dirs(
    frames_dir: str | Path, masks_dir: str | Path | None = None, name: str | None = None
) -> VideoFolder:
    """A :class:`VideoFolder` from a folder of frames and, optionally, one of masks.

    Frames are ``*.jpg / *.jpeg / *.png`` in name order (:func:`natural_key`). Masks are
    ``*.png`` matched to frames by file stem; a mask with no frame of the same stem, or two frames
    with one stem, raises InputError naming the file. ``name`` defaults to the frames folder name.
    """
    frames_dir = Path(frames_dir)
    _require_dir(frames_dir)
    frames = _files_with_suffix(frames_dir, FRAME_SUFFIXES)
    if not frames:
        raise InputError(frames_dir, f"no frames ({_FRAME_GLOB_TEXT})")
    index_of: dict[str, int] = {}
    for i, frame in enumerate(frames):
        if frame.stem in index_of:
            first = frames[index_of[frame.stem]].name
            raise InputError(frame, f"has the same name as {first}; which one is the frame?")
        index_of[frame.stem] = i

    masks: dict[int, Path] = {}
    if masks_dir is not None:
        masks_dir = Path(masks_dir)
        _require_dir(masks_dir)
        for mask in _files_with_suffix(masks_dir, (MASK_SUFFIX,)):
            if mask.stem not in index_of:
                raise InputError(mask, f"mask has no frame named {mask.stem}.* in {frames_dir}")
            masks[index_of[mask.stem]] = mask
    return VideoFolder(name or frames_dir.name, tuple(frames), masks)


def frame_size(video: VideoFolder) -> Size:
    """``(height, width)`` of the video's first frame, from its header."""
    return read_frame_size(video.frame_paths[0])


def iter_frames(video: VideoFolder, expected_size: Size | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of ``video`` in order, one ``H x W x 3`` uint8 array at a time.

    ``expected_size`` is ``(height, width)``; when None the first frame fixes it. A frame of
    another size raises InputError naming that frame and both sizes, at the moment it is reached
    (frames before it have been yielded already).
    """
    size = expected_size
    for path in video.frame_paths:
        frame = read_frame(path)
        got: Size = (frame.shape[0], frame.shape[1])
        if size is None:
            size = got
        _check_frame_size(path, got, size)
        yield frame


def read_frames_at(
    video: VideoFolder, indices: Iterable[int], expected_size: Size
) -> dict[int, np.ndarray]:
    """Frame index -> ``H x W x 3`` uint8 frame for just ``indices`` (e.g. the seed frames),
    with the same size check as :func:`iter_frames`."""
    frames = {}
    for t in indices:
        path = video.frame_paths[t]
        frame = read_frame(path)
        _check_frame_size(path, (frame.shape[0], frame.shape[1]), expected_size)
        frames[t] = frame
    return frames


def _check_frame_size(path: Path, got: Size, size: Size) -> None:
    if got != size:
        raise InputError(
            path,
            f"frame size {_wh(got)} (width x height) differs from the video's {_wh(size)}",
        )


def _resize_nearest(labels: np.ndarray, size: Size) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``(height, width)``; ids are never blended."""
    image = Image.fromarray(labels)
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.NEAREST)).copy()


def read_seeds(
    video: VideoFolder, size: Size, resize_mismatched: bool = False
) -> dict[int, np.ndarray]:
    """Frame index -> ``H x W`` uint8 label map for every annotated frame of ``video``.

    ``size`` is the frames' ``(height, width)``. A mask of another size raises InputError naming
    the mask and both sizes, unless ``resize_mismatched`` is set: then it is resized with nearest
    neighbour and a warning is logged (real data has this: cutie-judo/00005.png is 853 pixels
    wide beside 854-wide frames).
    """
    seeds: dict[int, np.ndarray] = {}
    for index in video.annotated_frames():
        path = video.mask_paths[index]
        labels = read_mask(path)
        got: Size = (labels.shape[0], labels.shape[1])
        if got != size:
            if not resize_mismatched:
                raise InputError(
                    path,
                    f"mask size {_wh(got)} (width x height) differs from the frames' {_wh(size)}; "
                    "fix the mask or pass resize_mismatched=True to resize it (nearest)",
                )
            logger.warning("%s: resizing mask from %s to %s (nearest)", path, _wh(got), _wh(size))
            labels = _resize_nearest(labels, size)
        seeds[index] = labels
    return seeds


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


# ---------------------------------------------------------------------------------------------
# a dataset root


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset keeps its sequences.

    ``frames_root/<seq>/`` holds a sequence's frames and ``masks_root/<seq>/`` its masks
    (``masks_root`` is None when the dataset has no ``Annotations`` folder: seeds come from
    elsewhere, e.g. a COCO-RLE file).
    """

    kind: Literal["davis", "youtube-vos"]
    frames_root: Path
    masks_root: Path | None

    def sequence_names(self) -> list[str]:
        """Sequence folder names under ``frames_root``, sorted; hidden folders skipped."""
        return sorted(p.name for p in _subdirs(self.frames_root))


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


def find_layout(root: str | Path, resolution: str = "480p") -> DatasetLayout:
    """Detect the layout under a dataset root.

    - DAVIS: ``JPEGImages/<resolution>/<seq>/*.jpg`` and ``Annotations/<resolution>/<seq>/*.png``;
    - YouTube-VOS (one split, e.g. ``train/``): ``JPEGImages/<seq>/*.jpg`` and
      ``Annotations/<seq>/*.png`` with masks on some frames only.

    A root with no ``JPEGImages`` folder, or a DAVIS root without the requested resolution, raises
    InputError saying what was found.
    """
    root = Path(root)
    _require_dir(root)
    images = root / "JPEGImages"
    if not images.is_dir():
        raise InputError(
            root,
            "has no JPEGImages folder: not a DAVIS or YouTube-VOS root (for a plain folder "
            "of frames use video_from_dirs)",
        )
    annotations = root / "Annotations"
    if (images / resolution).is_dir():
        masks = annotations / resolution
        return DatasetLayout("davis", images / resolution, masks if masks.is_dir() else None)

    sequences = _subdirs(images)
    holds_frames = any(_files_with_suffix(seq, FRAME_SUFFIXES) for seq in sequences)
    if sequences and not holds_frames and all(_subdirs(seq) for seq in sequences):
        found = ", ".join(sorted(p.name for p in sequences))
        raise InputError(
            images, f"looks like DAVIS but has no {resolution!r} folder (found: {found})"
        )
    return DatasetLayout("youtube-vos", images, annotations if annotations.is_dir() else None)


def list_videos(root: str | Path, resolution: str = "480p") -> list[VideoFolder]:
    """Every sequence under a DAVIS or YouTube-VOS root, sorted by name.

    A sequence without an annotation folder gets no masks; an annotation folder without a
    sequence is logged and skipped. A sequence folder with no frames raises InputError.
    """
    layout = find_layout(root, resolution)
    names = layout.sequence_names()
    if layout.masks_root is not None:
        orphans = sorted({p.name for p in _subdirs(layout.masks_root)} - set(names))
        if orphans:
            logger.warning(
                "%s: annotations without frames, skipped: %s", layout.masks_root, orphans
            )
    videos = []
    for name in names:
        masks = None if layout.masks_root is None else layout.masks_root / name
        if masks is not None and not masks.is_dir():
            masks = None
        videos.append(video_from_dirs(layout.frames_root / name, masks, name))
    logger.debug("%s: %d %s sequences", root, len(videos), layout.kind)
    return videos
