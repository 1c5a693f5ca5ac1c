"""A compact copy of the training data, small enough to travel with the code to a lent machine.

Why: a machine lent for a few minutes (a GPU with no network, reached by copying the working
tree, 64 MiB in all) cannot read ``../shared/data/train``, and that folder is about 190 MB of
JPEGs. Video frames are nearly the same from one frame to the next, which JPEG cannot use and a
video codec can: the DAVIS frames of a video go into one H.264 file (about a fifth of their
JPEG size at CRF 23), masks into 1-bit PNGs, photos are scaled down and a share of them kept.
``unpack_shard`` turns a shard back into the folder layouts the training configs read (DAVIS
``JPEGImages``/``Annotations``, ECSSD/DUTS ``images``/``masks``), so training reads it through
the same code as the original folders.

Layout of a shard folder::

    manifest.json                      what is where, the settings, a SHA-256 per file
    videos/<dataset>/<video>.mp4       the annotated frames of one video, in order
    videos/<dataset>/<video>/<frame>.png   their masks (mode "1" when binary, else palette)
    photos/<folder>/images/<stem>.jpg  photos, longer side at most ``photo_side``
    photos/<folder>/masks/<stem>.png

Packing needs PyAV (a dependency of the project); unpacking decodes with PyAV or, where only
OpenCV is installed (the lent GPU image), with OpenCV.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from stm_core.errors import InputError
from stm_core.io import file_sha256, read_frame, read_mask, write_mask
from stm_core.training.photo_clips import PhotoSource

from .folders import folder_video_source

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class ShardSettings:
    """How much of the data a shard keeps, and how well."""

    crf: int = 23  # x264 quality: 18 is near-transparent, 23 its default, 28 visibly soft
    photo_side: int = 320  # a photo's longer side at most this (ECSSD/DUTS are about 400)
    photo_quality: int = 85
    photos_per_folder: int | None = None  # None: every photo
    max_videos: int | None = None  # per dataset; None: every video


def _even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: drop a last odd row or column (the mask loses the same)."""
    return frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]


def _write_mask_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels.max(initial=0) <= 1:
        Image.fromarray(labels.astype(bool)).save(path, format="PNG", optimize=True)
    else:
        write_mask(path, labels)


def _encode_video(path: Path, frames: Iterator[np.ndarray], crf: int) -> tuple[int, int, int]:
    """Write RGB frames to an H.264 MP4; returns (frames, height, width)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    count, size = 0, None
    with av.open(str(path), "w", format="mp4") as container:
        stream = None
        for frame in frames:
            frame = _even(frame)
            if stream is None:
                size = frame.shape[:2]
                stream = container.add_stream("libx264", rate=Fraction(24))
                stream.height, stream.width = size
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "medium"}
            elif frame.shape[:2] != size:
                raise InputError(path, f"frame {count} is {frame.shape[:2]}, the first {size}")
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = count
            container.mux(stream.encode(video_frame))
            count += 1
        if stream is not None:
            container.mux(stream.encode(None))
    assert size is not None
    return count, size[0], size[1]


def decode_video(path: Path) -> list[np.ndarray]:
    """Every frame of a shard video as H x W x 3 uint8 RGB (PyAV, else OpenCV)."""
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        try:
            with av.open(str(path)) as container:
                return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except av.FFmpegError as exc:
            raise InputError(path, f"cannot decode: {exc}") from exc
    try:
        import cv2
    except ImportError as exc:
        raise InputError(path, "decoding a shard video needs PyAV or OpenCV") from exc
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    finally:
        capture.release()
    return frames


def pack_shard(
    video_roots: Sequence[str | Path],
    photo_roots: Sequence[str | Path],
    out: str | Path,
    *,
    resolution: str = "480p",
    settings: ShardSettings = ShardSettings(),
    max_mb: float | None = None,
) -> dict:
    """Write a shard of ``video_roots`` (DAVIS / YouTube-VOS layout, ``resolution``) and
    ``photo_roots`` (``images/`` + ``masks/``) to ``out``; returns its manifest.

    ``out`` is written under a temporary name and renamed when whole, so a stopped pack never
    leaves a shard that looks complete. Over ``max_mb``, nothing is left and InputError says
    how big it came out.
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    manifest: dict = {
        "format": FORMAT,
        "resolution": resolution,
        "settings": vars(settings),
        "videos": [],
        "photos": [],
    }
    taken_names: set[str] = set()
    for root in video_roots:
        dataset = Path(root).name
        if dataset in taken_names:
            raise InputError(root, f"a second folder named {dataset!r}; shard names must differ")
        taken_names.add(dataset)
        source = folder_video_source(root, resolution)
        for video in source.videos[: settings.max_videos]:
            relative = f"videos/{dataset}/{video.name}"
            pairs = [video.get(t) for t in range(len(video))]
            count, height, width = _encode_video(
                partial / f"{relative}.mp4", (frame for frame, _ in pairs), settings.crf
            )
            names = [p.stem for p in video.frame_paths]
            for name, (_, labels) in zip(names, pairs, strict=True):
                _write_mask_png(partial / relative / f"{name}.png", labels[:height, :width])
            manifest["videos"].append(
                {"dataset": dataset, "name": video.name, "frames": names, "size": [height, width]}
            )
        log.info("packed %d videos of %s", len(source.videos[: settings.max_videos]), root)
    for root in photo_roots:
        folder = Path(root).name
        if folder in taken_names:
            raise InputError(root, f"a second folder named {folder!r}; shard names must differ")
        taken_names.add(folder)
        pairs = PhotoSource(root).pairs
        keep = settings.photos_per_folder
        if keep is not None and keep < len(pairs):  # evenly spread over the sorted names
            pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, keep).round().astype(int)]
        stems = []
        for pair in pairs:
            image = Image.fromarray(read_frame(pair.image))
            labels = read_mask(pair.mask)
            if labels.shape != (image.height, image.width):
                raise InputError(pair.mask, f"is {labels.shape}, its photo {image.size[::-1]}")
            scale = settings.photo_side / max(image.size)
            if scale < 1:
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.LANCZOS)
                labels = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
            stem = pair.image.stem
            target = partial / "photos" / folder / "images" / f"{stem}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, format="JPEG", quality=settings.photo_quality)
            _write_mask_png(partial / "photos" / folder / "masks" / f"{stem}.png", labels)
            stems.append(stem)
        manifest["photos"].append({"folder": folder, "stems": stems})
        log.info("packed %d photos of %s", len(stems), root)
    files = sorted(p for p in partial.rglob("*") if p.is_file())
    manifest["files"] = {p.relative_to(partial).as_posix(): file_sha256(p) for p in files}
    total = sum(p.stat().st_size for p in files)
    manifest["bytes"] = total
    if max_mb is not None and total > max_mb * 1e6:
        shutil.rmtree(partial)
        raise InputError(out, f"the shard came to {total / 1e6:.1f} MB, over max_mb={max_mb}")
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return manifest


def read_manifest(shard: str | Path) -> dict:
    path = Path(shard) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(path, "missing: not a training shard (pack one with pack-shard)") from exc
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise InputError(path, f"format {manifest.get('format')!r}, this code reads {FORMAT}")
    return manifest


def unpack_shard(shard: str | Path, out: str | Path) -> dict:
    """Write the folders a shard was packed from (videos at their DAVIS resolution) to ``out``:
    ``out/<dataset>/{JPEGImages,Annotations}/<resolution>/<video>/`` and
    ``out/<folder>/{images,masks}/``. Every file is checked against the manifest's SHA-256
    first, and a video must decode to as many frames as it was packed with; either failure is
    an InputError naming the file. Returns the manifest."""
    shard, out = Path(shard), Path(out)
    manifest = read_manifest(shard)
    for relative, digest in manifest["files"].items():
        path = shard / relative
        if not path.is_file():
            raise InputError(path, "listed in the shard's manifest but missing")
        if file_sha256(path) != digest:
            raise InputError(path, "its SHA-256 differs from the manifest's: damaged in transit")
    resolution = manifest["resolution"]
    for video in manifest["videos"]:
        source = shard / "videos" / video["dataset"] / video["name"]
        frames = decode_video(source.with_suffix(".mp4"))
        if len(frames) != len(video["frames"]):
            raise InputError(
                source.with_suffix(".mp4"),
                f"decoded {len(frames)} frames, packed with {len(video['frames'])}",
            )
        images = out / video["dataset"] / "JPEGImages" / resolution / video["name"]
        masks = out / video["dataset"] / "Annotations" / resolution / video["name"]
        images.mkdir(parents=True, exist_ok=True)
        for name, frame in zip(video["frames"], frames, strict=True):
            Image.fromarray(frame).save(images / f"{name}.jpg", format="JPEG", quality=95)
            write_mask(masks / f"{name}.png", read_mask(source / f"{name}.png"))
    for group in manifest["photos"]:
        source = shard / "photos" / group["folder"]
        target = out / group["folder"]
        (target / "images").mkdir(parents=True, exist_ok=True)
        for stem in group["stems"]:
            shutil.copyfile(source / "images" / f"{stem}.jpg", target / "images" / f"{stem}.jpg")
            write_mask(
                target / "masks" / f"{stem}.png", read_mask(source / "masks" / f"{stem}.png")
            )
    log.info(
        "unpacked %d videos and %d photos to %s",
        len(manifest["videos"]),
        sum(len(g["stems"]) for g in manifest["photos"]),
        out,
    )
    return manifest
