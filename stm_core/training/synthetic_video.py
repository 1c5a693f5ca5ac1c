"""Synthetic multi-object videos with exact masks, rendered on the CPU from a seed.

Why: STM needs video clips with per-object masks to learn matching across time, and this project
may not use downloaded training sets. A video here is a *plan* (background, camera path, sprites
with their motion, lighting) drawn from a seed, plus a renderer that draws any frame ``t`` of the
plan independently. So a clip sampler can render only the 3 frames it needs (see
``video_clips.py``), and ``make_video_stream`` yields frames lazily.

What a frame contains (H x W):

- Background: a photo patch or a procedural texture about 1.25-1.5x larger than the frame, with a
  few unlabelled distractor shapes baked in, seen through a moving camera (pan, zoom, slight roll).
- Objects (ids 1..N): shapes (smooth blobs, concave polygons, multi-part blobs, some with holes)
  cut from other photos or textures, moving along smooth paths in frame coordinates, rotating,
  scaling, stretching and wobbling (a smooth non-rigid mesh warp). They are drawn in a fixed random
  z-order, so they occlude each other; some leave the frame and come back.
- Global lighting that drifts over time and, on some frames, a short directional motion blur.

Masks are label maps (0 background, ids 1..N) of the *visible* pixels: an object's pixel is
labelled where its rendered alpha is at least one half and no object in front of it covers it.

Determinism: everything is drawn from ``numpy.random.SeedSequence([seed, split tag, purpose])``;
``split="train"`` and ``split="heldout"`` use different tags (disjoint streams) and disjoint photos
(see ``textures.py``). Per-frame events are drawn from ``[seed, split tag, purpose, t]``, so frame
``t`` does not depend on how many frames are rendered: a 30-frame video is the first 30 frames of
the 60-frame one with the same seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import InputError
from .textures import (
    Split,
    image_names,
    jitter_matrix,
    linear_colour,
    photo_patch,
    random_texture,
    recolour,
)

Paint = Callable[[np.ndarray], np.ndarray]

logger = logging.getLogger(__name__)

_SPLIT_TAGS = {"train": 11, "heldout": 23}
_PLAN_PURPOSE = 0
_EVENT_PURPOSE = 1
_RECOLOUR_PURPOSE = 4  # 2 and 3 are taken by static_clips and heldout
_LOOKALIKE_PURPOSE = 5
_MAX_OBJECTS = 255
_MIN_SIDE = 16


def split_rng(seed: int, split: Split, purpose: int, *extra: int) -> np.random.Generator:
    """A generator for (seed, split, purpose, extra...); train and heldout streams never overlap."""
    if split not in _SPLIT_TAGS:
        raise InputError("split", f"must be 'train' or 'heldout', got {split!r}")
    if seed < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed}")
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), _SPLIT_TAGS[split], purpose, *extra])
    )


@dataclass(frozen=True)
class SyntheticVideo:
    """A rendered video: ``frames`` T x H x W x 3 uint8, ``masks`` T x H x W uint8 (ids 1..N)."""

    name: str
    frames: np.ndarray
    masks: np.ndarray
    num_objects: int


@dataclass(frozen=True)
class SmoothPath:
    """A smooth scalar function of the frame index t (float):
    ``offset + drift * t + sum_i amps[i] * sin(freqs[i] * t + phases[i])``."""

    offset: float
    drift: float
    amps: tuple[float, ...] = ()
    freqs: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    def at(self, t: float) -> float:
        value = self.offset + self.drift * t
        for amp, freq, phase in zip(self.amps, self.freqs, self.phases, strict=True):
            value += amp * math.sin(freq * t + phase)
        return value

    @staticmethod
    def starting_at(
        start: float, drift: float, amps: list[float], freqs: list[float], phases: list[float]
    ) -> SmoothPath:
        """The path whose value at t = 0 is ``start``."""
        offset = start - sum(a * math.sin(p) for a, p in zip(amps, phases, strict=True))
        return SmoothPath(offset, drift, tuple(amps), tuple(freqs), tuple(phases))


@dataclass(frozen=True)
class Sprite:
    """One object (id >= 1) or unlabelled distractor (id 0): an RGBA patch (alpha = shape) and
    how it moves.

    The patch is h x w in object-local pixels, the shape's centre at ``anchor``. At frame t the
    forward map is ``frame_xy = centre(t) + A(t) @ (uv - anchor)`` with
    ``A = scale * R(angle) @ [[e^stretch, shear], [0, e^-stretch]]``, plus a wobble: a sum of
    travelling sine displacements (``wobble_amp`` M x 2 px, ``wobble_k`` M x 2 rad/px,
    ``wobble_freq`` M rad/frame, ``wobble_phase`` M) applied in patch coordinates.
    """

    object_id: int
    rgba: Image.Image
    anchor: tuple[float, float]  # the shape's centre (x, y) in patch pixels
    x: SmoothPath
    y: SmoothPath
    angle: SmoothPath
    log_scale: SmoothPath
    stretch: SmoothPath
    shear: SmoothPath
    wobble_amp: np.ndarray
    wobble_k: np.ndarray
    wobble_freq: np.ndarray
    wobble_phase: np.ndarray


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render any frame of one synthetic video (see module docstring)."""

    seed: int
    split: Split
    size: tuple[int, int]  # (H, W) of rendered frames
    num_frames: int
    background: Image.Image  # RGB, larger than the frame
    cam_x: SmoothPath  # view centre in background pixels
    cam_y: SmoothPath
    cam_log_zoom: SmoothPath  # >= 0: the view never shows more than the background
    cam_angle: SmoothPath  # radians
    sprites: tuple[Sprite, ...]  # back to front; object_id 0 = unlabelled distractor
    light_log_gain: SmoothPath
    light_tint: tuple[SmoothPath, SmoothPath, SmoothPath]
    blur_prob: float

    @property
    def num_objects(self) -> int:
        """Labelled objects (ids 1..num_objects); distractors are not counted."""
        return sum(1 for sprite in self.sprites if sprite.object_id > 0)


# --------------------------------------------------------------------------- shapes


def _blob_outline(
    rng: np.random.Generator, radius: float, points: int = 64, roughness: float | None = None
) -> np.ndarray:
    """Polar blob r(theta) = radius * (1 + sum_k a_k cos(k theta + phi_k)); points x 2 (x, y).

    Harmonics 2..6 with total weight up to ``roughness`` give concavities; r is kept >= 0.3 radius.
    """
    theta = np.linspace(0, 2 * np.pi, points, endpoint=False)
    if roughness is None:
        roughness = rng.uniform(0.1, 0.6)
    ks = np.arange(2, 7)
    weights = rng.random(len(ks)) / ks
    weights *= roughness / max(weights.sum(), 1e-6)
    phases = rng.uniform(0, 2 * np.pi, len(ks))
    r = 1.0 + (weights[:, None] * np.cos(ks[:, None] * theta[None] + phases[:, None])).sum(0)
    r = radius * np.maximum(r, 0.3)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _polygon_outline(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A random star-shaped polygon with 3..9 vertices (often concave); points x 2 (x, y)."""
    n = int(rng.integers(3, 10))
    theta = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.45, 1.0, n)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def random_shape(rng: np.random.Generator, radius: float, side: int) -> np.ndarray:
    """A random object silhouette as side x side float32 alpha in [0, 1], centred.

    Kinds: smooth blob, concave polygon, or a union of 2-3 blobs (multi-part object); a third of
    them get a hole. Drawn at 2x and downsampled so edges are anti-aliased. ``radius`` (px) is
    the nominal size; the shape stays inside ``side``.
    """
    ss = 2
    canvas = Image.new("L", (side * ss, side * ss), 0)
    draw = ImageDraw.Draw(canvas)
    centre = np.array([side / 2, side / 2]) * ss
    kind = rng.random()
    if kind < 0.45:
        parts = [(_blob_outline(rng, radius), np.zeros(2))]
    elif kind < 0.7:
        parts = [(_polygon_outline(rng, radius * 1.2), np.zeros(2))]
    else:
        parts = [(_blob_outline(rng, radius * 0.75, roughness=0.3), np.zeros(2))]
        for _ in range(int(rng.integers(1, 3))):
            direction = rng.uniform(0, 2 * np.pi)
            offset = (
                radius * rng.uniform(0.5, 0.8) * np.array([np.cos(direction), np.sin(direction)])
            )
            parts.append(
                (_blob_outline(rng, radius * rng.uniform(0.3, 0.5), roughness=0.3), offset)
            )
    for outline, offset in parts:
        pts = (outline + offset) * ss + centre
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    if rng.random() < 0.33:
        hole = _blob_outline(rng, radius * rng.uniform(0.12, 0.25), 32, 0.2)
        shift = rng.uniform(-0.15, 0.15, 2) * radius
        pts = (hole + shift) * ss + centre
        draw.polygon([tuple(p) for p in pts.tolist()], fill=0)
    small = canvas.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _jitter_colours(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness/contrast/saturation/channel-gain change, H x W x 3 uint8 -> same."""
    matrix, offset = jitter_matrix(
        patch[::4, ::4].mean(axis=(0, 1)),
        contrast=rng.uniform(0.7, 1.4),
        brightness=rng.uniform(0.6, 1.4),
        saturation=rng.uniform(0.5, 1.6),
        gains=rng.uniform(0.75, 1.25, 3),
    )
    return linear_colour(patch, matrix, offset)


def _make_sprite_image(
    rng: np.random.Generator,
    radius: float,
    split: Split,
    avoid_photo: str | None,
    paint: Paint | None = None,
) -> tuple[Image.Image, tuple[float, float]]:
    """RGBA patch: texture from a photo (not ``avoid_photo``) or a procedural texture, alpha =
    a random shape; sometimes shaded darker toward the rim so it reads as a solid thing.

    The patch is cropped to the shape's box (warping fewer pixels is most of the render time);
    also returns the shape's centre (x, y) in the cropped patch.
    """
    side = int(math.ceil(radius * 3.4)) + 4
    alpha = random_shape(rng, radius, side)
    rows, cols = np.nonzero(alpha.any(axis=1))[0], np.nonzero(alpha.any(axis=0))[0]
    y0, y1 = max(int(rows[0]) - 2, 0), min(int(rows[-1]) + 3, side)
    x0, x1 = max(int(cols[0]) - 2, 0), min(int(cols[-1]) + 3, side)
    alpha = alpha[y0:y1, x0:x1]
    size = alpha.shape
    if rng.random() < 0.45:
        colours = random_texture(rng, size)
    else:
        names = [n for n in image_names(split) if n != avoid_photo]
        colours = photo_patch(rng, size, split, names[int(rng.integers(len(names)))])
    if paint is not None:
        colours = paint(colours)
    if rng.random() < 0.5:
        colours = _jitter_colours(colours, rng)
    if rng.random() < 0.5:
        # Darker toward the rim: a blurred silhouette is ~0.5 at the edge and 1 deep inside.
        blurred = Image.fromarray((alpha * 255).astype(np.uint8)).filter(
            ImageFilter.BoxBlur(max(radius * 0.3, 1.0))
        )
        depth = np.asarray(blurred, dtype=np.float32) / 255.0
        shade = (0.45 + 0.55 * depth)[..., None]
        colours = (colours * shade).astype(np.uint8)
    rgba = np.dstack([colours, (alpha * 255.0 + 0.5).astype(np.uint8)])
    patch = Image.fromarray(rgba, mode="RGBA")
    return patch, (side / 2 - x0, side / 2 - y0)


# --------------------------------------------------------------------------- planning


def _sines(
    rng: np.random.Generator, count: int, amp: tuple[float, float], freq: tuple[float, float]
) -> tuple[list[float], list[float], list[float]]:
    amps = rng.uniform(*amp, count).tolist()
    freqs = (rng.uniform(*freq, count) * rng.choice([-1.0, 1.0], count)).tolist()
    phases = rng.uniform(0, 2 * np.pi, count).tolist()
    return amps, freqs, phases


def _wavy_path(
    rng: np.random.Generator,
    count: int,
    amp: tuple[float, float],
    freq: tuple[float, float],
    start: tuple[float, float],
    drift: tuple[float, float] | None = None,
) -> SmoothPath:
    """A path of ``count`` random sines whose value at t = 0 is drawn from ``start`` and whose
    drift per frame from ``drift`` (0 when None). Draws the sines, then the start, then the
    drift: that order is part of every seed's video."""
    amps, freqs, phases = _sines(rng, count, amp, freq)
    start_value = rng.uniform(*start)
    drift_value = rng.uniform(*drift) if drift is not None else 0.0
    return SmoothPath.starting_at(start_value, drift_value, amps, freqs, phases)


def _slow_sine(rng: np.random.Generator, offset: float, amp: float) -> SmoothPath:
    """``offset + amp * sin(freq * t + phase)``, freq 0.02-0.1 rad/frame: a camera's zoom or
    roll. Draws the freq, then the phase."""
    freq = rng.uniform(0.02, 0.1)
    return SmoothPath(offset, 0.0, (amp,), (freq,), (rng.uniform(0, 2 * np.pi),))


def _plan_sprite(
    rng: np.random.Generator,
    object_id: int,
    size: tuple[int, int],
    split: Split,
    avoid_photo: str | None,
    start: tuple[float, float],
    radius_range: tuple[float, float] = (0.1, 0.28),
    paint: Paint | None = None,
) -> Sprite:
    """A sprite starting at ``start`` (x, y px); radius is ``radius_range`` x the frame's short
    side; ``object_id`` 0 makes an unlabelled distractor."""
    height, width = size
    short = min(height, width)
    diag = math.hypot(height, width)
    radius = short * rng.uniform(*radius_range)
    rgba, anchor = _make_sprite_image(rng, radius, split, avoid_photo, paint)
    side = max(rgba.size)

    def centre_path(start_value: float, extent: float) -> SmoothPath:
        drift = rng.uniform(-0.003, 0.003) * diag
        amps, freqs, phases = _sines(rng, 2, (0.03 * extent, 0.2 * extent), (0.02, 0.08))
        return SmoothPath.starting_at(start_value, drift, amps, freqs, phases)

    x = centre_path(start[0], width)
    y = centre_path(start[1], height)
    if rng.random() < 0.2:  # a big swing: leaves the frame and comes back
        big = rng.uniform(0.55, 0.9)
        freq = 2 * np.pi / rng.uniform(50.0, 100.0)  # out and back in 25-50 frames
        if rng.random() < 0.5:
            x = SmoothPath.starting_at(start[0], 0.0, [big * width], [freq], [0.0])
        else:
            y = SmoothPath.starting_at(start[1], 0.0, [big * height], [freq], [0.0])
    angle = _wavy_path(rng, 1, (0.0, 0.4), (0.03, 0.2), (0, 2 * np.pi), (-0.04, 0.04))
    log_scale = _wavy_path(rng, 1, (0.0, 0.25), (0.02, 0.12), (-0.15, 0.15), (-0.003, 0.003))
    stretch = _wavy_path(rng, 1, (0.0, 0.12), (0.05, 0.25), (-0.1, 0.1))
    shear = _wavy_path(rng, 1, (0.0, 0.15), (0.05, 0.25), (-0.1, 0.1))
    modes = 2
    wobble_amp = rng.uniform(-0.04, 0.04, (modes, 2)) * side
    directions = rng.uniform(0, 2 * np.pi, modes)
    wavenumber = 2 * np.pi / side * rng.uniform(0.5, 1.5, modes)
    wobble_k = np.stack([np.cos(directions), np.sin(directions)], axis=1) * wavenumber[:, None]
    return Sprite(
        object_id=object_id,
        rgba=rgba,
        anchor=anchor,
        x=x,
        y=y,
        angle=angle,
        log_scale=log_scale,
        stretch=stretch,
        shear=shear,
        wobble_amp=wobble_amp,
        wobble_k=wobble_k,
        wobble_freq=rng.uniform(0.05, 0.3, modes),
        wobble_phase=rng.uniform(0, 2 * np.pi, modes),
    )


def _background(
    rng: np.random.Generator, size: tuple[int, int], split: Split, paint: Paint | None = None
) -> tuple[Image.Image, str | None]:
    """Background image (RGB, ``size`` = (H, W)) with 0-3 unlabelled distractors baked in.

    Returns the image and the photo name it came from (None for a texture), so objects can be
    cut from a different photo.
    """
    photo: str | None = None
    if rng.random() < 0.35:
        pixels = random_texture(rng, size)
    else:
        names = image_names(split)
        photo = names[int(rng.integers(len(names)))]
        pixels = photo_patch(rng, size, split, photo)
    if paint is not None:
        pixels = paint(pixels)
    image = Image.fromarray(pixels, mode="RGB")
    height, width = size
    for _ in range(int(rng.integers(0, 4))):
        radius = min(height, width) * rng.uniform(0.05, 0.15)
        distractor, _ = _make_sprite_image(rng, radius, split, photo, paint)
        angle = rng.uniform(0, 360)
        distractor = distractor.rotate(angle, Image.Resampling.BILINEAR, expand=True)
        px = int(rng.uniform(0, width - distractor.size[0]))
        py = int(rng.uniform(0, height - distractor.size[1]))
        image.paste(distractor, (px, py), distractor)
    return image, photo


def _painter(seed: int, split: Split, prob: float) -> Paint | None:
    """The repainting step of one plan (None when ``prob`` is 0), on its own random stream."""
    if not 0.0 <= prob <= 1.0:
        raise InputError("recolour_prob", f"must be in [0, 1], got {prob}")
    if prob == 0.0:
        return None
    rng = split_rng(seed, split, _RECOLOUR_PURPOSE)

    def paint(pixels: np.ndarray) -> np.ndarray:
        return recolour(pixels, rng) if rng.random() < prob else pixels

    return paint


def _lookalikes(
    seed: int,
    split: Split,
    size: tuple[int, int],
    photo: str | None,
    sprites: list[Sprite],
    prob: float,
    paint: Paint | None,
) -> list[Sprite]:
    """``sprites`` with, at probability ``prob``, 1-3 unlabelled distractors of object size
    inserted at random depths.

    Why: the plan's own distractors are smaller than objects, so a network can learn "a big
    pasted shape is a target" and never consult its memory; on new imagery that shortcut labels
    every salient thing (held-out videos showed it). Distractors that look like objects leave
    the memory of frame 0 as the only way to tell them apart.
    """
    rng = split_rng(seed, split, _LOOKALIKE_PURPOSE)
    if rng.random() >= prob:
        return sprites
    height, width = size
    out = list(sprites)
    for _ in range(int(rng.integers(1, 4))):
        start = (rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height)
        extra = _plan_sprite(rng, 0, size, split, photo, start, paint=paint)
        out.insert(int(rng.integers(len(out) + 1)), extra)
    return out


def _check_args(num_frames: int, size: tuple[int, int], num_objects: int) -> None:
    if num_frames < 1:
        raise InputError("num_frames", f"must be >= 1, got {num_frames}")
    if len(size) != 2 or min(size) < _MIN_SIDE:
        raise InputError("size", f"must be (H, W) with both >= {_MIN_SIDE}, got {size}")
    if not 1 <= num_objects <= _MAX_OBJECTS:
        raise InputError("num_objects", f"must be in 1..{_MAX_OBJECTS}, got {num_objects}")


def plan_video(
    seed: int,
    num_frames: int,
    size: tuple[int, int],
    num_objects: int,
    split: Split = "train",
    camera_motion: bool = True,
    recolour_prob: float = 0.0,
    lookalike_prob: float = 0.0,
) -> VideoPlan:
    """Draw a video plan from ``seed``: cheap (a few ms); render frames with ``render_frame``.

    ``camera_motion=False`` keeps the camera still and the background frame-sized: for single
    pictures (``static_clips.procedural_pair``), where a bigger background would only cost time.
    ``recolour_prob``: each background and sprite image is repainted (``textures.recolour``)
    with this probability. The repainting draws from its own stream, so geometry, motion and
    masks are those of ``recolour_prob=0`` and the default leaves every video as it was.
    ``lookalike_prob``: with this probability the plan gets 1-3 more unlabelled distractors
    drawn like objects (same sizes, textures and motion; see ``_lookalikes``), also from their
    own stream, so the default leaves every video as it was.
    """
    _check_args(num_frames, size, num_objects)
    if not 0.0 <= lookalike_prob <= 1.0:
        raise InputError("lookalike_prob", f"must be in [0, 1], got {lookalike_prob}")
    rng = split_rng(seed, split, _PLAN_PURPOSE)
    paint = _painter(seed, split, recolour_prob)
    height, width = size

    # Camera: the view (at most frame-sized since zoom >= 1) stays inside the background.
    bg_scale = rng.uniform(1.25, 1.5) if camera_motion else 1.0
    bg_h, bg_w = int(math.ceil(height * bg_scale)), int(math.ceil(width * bg_scale))
    background, photo = _background(rng, (bg_h, bg_w), split, paint)
    max_roll = 0.05 if rng.random() < 0.7 and camera_motion else 0.0
    half_w = width / 2 + height / 2 * math.sin(max_roll)
    half_h = height / 2 + width / 2 * math.sin(max_roll)
    margin_x, margin_y = max(bg_w / 2 - half_w, 0.0), max(bg_h / 2 - half_h, 0.0)
    moving = rng.random() < 0.8 and camera_motion

    def bounded(centre: float, margin: float) -> SmoothPath:
        if not moving or margin <= 0:
            return SmoothPath(centre, 0.0)
        weights = rng.random(2)
        weights = weights / weights.sum() * margin * 0.98
        freqs = rng.uniform(0.01, 0.07, 2).tolist()
        return SmoothPath(
            centre,
            0.0,
            tuple(weights.tolist()),
            tuple(freqs),
            tuple(rng.uniform(0, 2 * np.pi, 2).tolist()),
        )

    cam_x = bounded(bg_w / 2, margin_x)
    cam_y = bounded(bg_h / 2, margin_y)
    zoom_amp = rng.uniform(0.0, 0.1) if moving else 0.0
    cam_log_zoom = _slow_sine(rng, zoom_amp + rng.uniform(0.0, 0.05), zoom_amp)
    cam_angle = _slow_sine(rng, 0.0, max_roll * rng.random())

    # Objects: start inside the frame; some start next to an earlier one so they overlap.
    starts: list[tuple[float, float]] = []
    for _ in range(num_objects):
        if starts and rng.random() < 0.4:
            base = starts[int(rng.integers(len(starts)))]
            direction = rng.uniform(0, 2 * np.pi)
            dist = min(height, width) * rng.uniform(0.1, 0.25)
            sx = float(np.clip(base[0] + dist * math.cos(direction), 0.1 * width, 0.9 * width))
            sy = float(np.clip(base[1] + dist * math.sin(direction), 0.1 * height, 0.9 * height))
        else:
            sx = rng.uniform(0.15, 0.85) * width
            sy = rng.uniform(0.15, 0.85) * height
        starts.append((sx, sy))
    sprites = [
        _plan_sprite(rng, object_id, size, split, photo, starts[object_id - 1], paint=paint)
        for object_id in range(1, num_objects + 1)
    ]
    # Moving but unlabelled distractors (id 0): not everything that moves is a target, and
    # they occlude targets the way unannotated things do in real videos.
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        start = (rng.uniform(0.0, 1.0) * width, rng.uniform(0.0, 1.0) * height)
        sprites.append(_plan_sprite(rng, 0, size, split, photo, start, (0.06, 0.15), paint))
    order = rng.permutation(len(sprites))
    sprites = [sprites[i] for i in order]
    if lookalike_prob > 0.0:
        sprites = _lookalikes(seed, split, size, photo, sprites, lookalike_prob, paint)

    light = _wavy_path(rng, 2, (0.0, 0.12), (0.02, 0.15), (-0.15, 0.15))
    tints = [_wavy_path(rng, 1, (0.0, 0.04), (0.02, 0.1), (-0.05, 0.05)) for _ in range(3)]
    return VideoPlan(
        seed=seed,
        split=split,
        size=(height, width),
        num_frames=num_frames,
        background=background,
        cam_x=cam_x,
        cam_y=cam_y,
        cam_log_zoom=cam_log_zoom,
        cam_angle=cam_angle,
        sprites=tuple(sprites),
        light_log_gain=light,
        light_tint=(tints[0], tints[1], tints[2]),
        blur_prob=float(rng.uniform(0.0, 0.2)),
    )


# --------------------------------------------------------------------------- rendering


def _camera_affine(plan: VideoPlan, t: int) -> tuple[float, ...]:
    """PIL AFFINE coefficients mapping a frame pixel (x, y) to background coordinates."""
    height, width = plan.size
    zoom = math.exp(plan.cam_log_zoom.at(t))
    roll = plan.cam_angle.at(t)
    cos, sin = math.cos(roll) / zoom, math.sin(roll) / zoom
    cx, cy = plan.cam_x.at(t), plan.cam_y.at(t)
    # bg = c + R (p - frame_centre) / zoom
    a, b = cos, -sin
    d, e = sin, cos
    c = cx - a * width / 2 - b * height / 2
    f = cy - d * width / 2 - e * height / 2
    return (a, b, c, d, e, f)


def _sprite_matrix(sprite: Sprite, t: int) -> np.ndarray:
    """The 2x2 forward matrix A(t) (patch px -> frame px) of a sprite."""
    angle = sprite.angle.at(t)
    scale = math.exp(sprite.log_scale.at(t))
    k = sprite.stretch.at(t)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shape = np.array([[math.exp(k), sprite.shear.at(t)], [0.0, math.exp(-k)]])
    return scale * rot @ shape


def _warp_sprite(
    sprite: Sprite, t: int, size: tuple[int, int]
) -> tuple[Image.Image, int, int] | None:
    """Render one sprite at frame t: its RGBA image over its clipped bounding box and the box's
    top-left corner (x0, y0) in the frame, or None if it lies entirely outside the frame.

    Uses a Pillow MESH transform: the box is cut into cells of about 24 px and each cell is
    mapped bilinearly to the source quad given by the inverse affine plus the wobble.
    """
    height, width = size
    patch_w, patch_h = sprite.rgba.size
    anchor = np.array(sprite.anchor)
    matrix = _sprite_matrix(sprite, t)
    centre = np.array([sprite.x.at(t), sprite.y.at(t)])
    pad = float(np.abs(sprite.wobble_amp).sum()) + 1.0  # the wobble can pull pixels this far
    left, top = -anchor[0] - pad, -anchor[1] - pad
    right, bottom = patch_w - anchor[0] + pad, patch_h - anchor[1] + pad
    corners = np.array([[left, top], [right, top], [right, bottom], [left, bottom]])
    mapped = corners @ matrix.T + centre
    x0 = max(int(math.floor(mapped[:, 0].min())), 0)
    y0 = max(int(math.floor(mapped[:, 1].min())), 0)
    x1 = min(int(math.ceil(mapped[:, 0].max())) + 1, width)
    y1 = min(int(math.ceil(mapped[:, 1].max())) + 1, height)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    box_w, box_h = x1 - x0, y1 - y0
    # Cells of ~24 px, at most 8 per side: the wobble's wavelength is >= 2/3 of the patch, so
    # this samples it finely enough, and each cell costs one Pillow call.
    xs = np.unique(np.linspace(0, box_w, min(max(2, box_w // 24 + 1), 9)).round().astype(int))
    ys = np.unique(np.linspace(0, box_h, min(max(2, box_h // 24 + 1), 9)).round().astype(int))
    gx, gy = np.meshgrid(xs, ys)  # node positions in box coordinates
    frame_pts = np.stack([gx + x0, gy + y0], axis=-1).astype(np.float64)
    inverse = np.linalg.inv(matrix)
    src = (frame_pts - centre) @ inverse.T + anchor  # rows x cols x 2, patch coordinates
    phase = src @ sprite.wobble_k.T + sprite.wobble_freq * t + sprite.wobble_phase  # r x c x M
    src = src + np.sin(phase) @ sprite.wobble_amp
    mesh = []
    for j in range(len(ys) - 1):
        for i in range(len(xs) - 1):
            ul, ll = src[j, i], src[j + 1, i]
            lr, ur = src[j + 1, i + 1], src[j, i + 1]
            quad = (ul[0], ul[1], ll[0], ll[1], lr[0], lr[1], ur[0], ur[1])
            mesh.append(((int(xs[i]), int(ys[j]), int(xs[i + 1]), int(ys[j + 1])), quad))
    warped = sprite.rgba.transform(
        (box_w, box_h), Image.Transform.MESH, mesh, Image.Resampling.BILINEAR
    )
    return warped, x0, y0


def _blur_kernel(angle: float, length: int) -> list[float]:
    """A 5x5 line kernel of ``length`` (3 or 5) taps along ``angle`` (radians)."""
    kernel = np.zeros((5, 5), np.float32)
    for step in np.linspace(-(length - 1) / 2, (length - 1) / 2, length):
        col = int(round(2 + step * math.cos(angle)))
        row = int(round(2 + step * math.sin(angle)))
        kernel[row, col] += 1.0
    return kernel.ravel().tolist()


def render_frame(
    plan: VideoPlan, t: int, return_amodal: bool = False
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render frame ``t`` of ``plan``: (H x W x 3 uint8 frame, H x W uint8 label map).

    With ``return_amodal`` also returns K x H x W bool: each object's full silhouette in this
    frame, ignoring occlusion (row k is object id k + 1). Used to check occlusion happens.
    """
    if t < 0:
        raise InputError("t", f"frame index must be >= 0, got {t}")
    height, width = plan.size
    frame = plan.background.transform(
        (width, height), Image.Transform.AFFINE, _camera_affine(plan, t), Image.Resampling.BILINEAR
    )
    labels = np.zeros((height, width), np.uint8)
    amodal = np.zeros((plan.num_objects, height, width), bool) if return_amodal else None
    for sprite in plan.sprites:
        warped = _warp_sprite(sprite, t, plan.size)
        if warped is None:
            continue
        image, x0, y0 = warped
        frame.paste(image, (x0, y0), image)
        inside = np.asarray(image.getchannel("A")) >= 128
        box = labels[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]]
        box[inside] = sprite.object_id  # a distractor (id 0) hides what it covers
        if amodal is not None and sprite.object_id > 0:
            amodal[sprite.object_id - 1, y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]] = (
                inside
            )

    gain = math.exp(plan.light_log_gain.at(t))
    ramp = np.arange(256, dtype=np.float32)
    lut: list[int] = []
    for tint in plan.light_tint:
        lut.extend(np.clip(ramp * gain * math.exp(tint.at(t)), 0, 255).astype(np.uint8).tolist())
    frame = frame.point(lut)
    events = split_rng(plan.seed, plan.split, _EVENT_PURPOSE, t)
    if events.random() < plan.blur_prob:
        length = 3 if events.random() < 0.5 else 5
        kernel = _blur_kernel(events.uniform(0, np.pi), length)
        frame = frame.filter(ImageFilter.Kernel((5, 5), kernel, scale=sum(kernel)))
    pixels = np.asarray(frame, dtype=np.uint8)
    if amodal is not None:
        return pixels, labels, amodal
    return pixels, labels


def make_video_stream(
    seed: int, num_frames: int, size: tuple[int, int], num_objects: int, split: Split = "train"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame H x W x 3 uint8, mask H x W uint8) one frame at a time, same as make_video."""
    plan = plan_video(seed, num_frames, size, num_objects, split)
    for t in range(num_frames):
        frame, mask = render_frame(plan, t)[:2]
        yield frame, mask


def make_video(
    seed: int,
    num_frames: int,
    size: tuple[int, int],
    num_objects: int,
    split: Split = "train",
    recolour_prob: float = 0.0,
) -> SyntheticVideo:
    """Render a whole synthetic video: frames T x H x W x 3 uint8, masks T x H x W uint8 (1..N).

    ``size`` is (H, W). Deterministic from (seed, split, recolour_prob; see ``plan_video``).
    Cheap enough to render every training clip on the fly (milliseconds per frame:
    docs/benchmarks.md).
    """
    plan = plan_video(seed, num_frames, size, num_objects, split, recolour_prob=recolour_prob)
    height, width = size
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    masks = np.empty((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        frames[t], masks[t] = render_frame(plan, t)[:2]
    return SyntheticVideo(
        name=f"synth-{split}-{seed:06d}", frames=frames, masks=masks, num_objects=num_objects
    )
