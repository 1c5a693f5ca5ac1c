"""Imagery for synthetic training data: scikit-image's bundled photos and seeded textures.

Why both: the photos give natural statistics (edges, shading, fur, text, clutter) but there are
only a dozen of them; the procedural textures (fractal noise, stripes, checkers, gradients, grain)
give unlimited variety from a seed. Every sampler here takes a ``numpy.random.Generator`` and
nothing else random, so a caller's seed fixes the output.

The photos are split by name into two disjoint sets:

- ``TRAIN_IMAGES`` feed training clips.
- ``HELDOUT_IMAGES`` feed only the held-out evaluation videos (``split="heldout"``).

``chelsea`` and ``cat`` are the same photo in scikit-image, and ``stereo_motorcycle`` is a stereo
pair, so only one name of each is used. Images that scikit-image would have to download
(``eagle``, ``lily``, ...) are not used: nothing here touches the network.
"""

from __future__ import annotations

import logging
import math
from functools import cache
from typing import Literal

import numpy as np
from PIL import Image

from ..errors import InputError

logger = logging.getLogger(__name__)

Split = Literal["train", "heldout"]

#: Photos for training. Colour ones first, then greyscale ones (tinted when sampled).
TRAIN_IMAGES: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "brick",
    "camera",
    "cell",
    "grass",
    "gravel",
    "moon",
    "page",
    "text",
)

#: Photos kept for held-out evaluation only; disjoint from ``TRAIN_IMAGES``.
HELDOUT_IMAGES: tuple[str, ...] = (
    "rocket",
    "stereo_motorcycle",
    "coins",
    "clock",
)

TEXTURE_KINDS: tuple[str, ...] = ("fractal", "stripes", "checker", "gradient", "grain")

_MAX_PHOTO_SIDE = 768


def image_names(split: Split) -> tuple[str, ...]:
    """The photo names of one split."""
    if split == "train":
        return TRAIN_IMAGES
    if split == "heldout":
        return HELDOUT_IMAGES
    raise InputError("split", f"must be 'train' or 'heldout', got {split!r}")


@cache
def load_image(name: str) -> Image.Image:
    """One bundled scikit-image photo as an RGB (or 'L' for greyscale) PIL image, cached.

    Cached per process because decoding a PNG costs milliseconds and samplers call this for
    every clip.
    """
    import skimage.data as skdata  # imported lazily: it is slow to import

    if name not in TRAIN_IMAGES and name not in HELDOUT_IMAGES:
        raise InputError(f"skimage.data.{name}", "is not one of the photos this module uses")
    array = getattr(skdata, name)()
    if isinstance(array, tuple):  # stereo_motorcycle -> (left, right, disparity)
        array = array[0]
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise InputError(f"skimage.data.{name}", f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 3:
        image = Image.fromarray(np.ascontiguousarray(array[..., :3]), mode="RGB")
    else:
        image = Image.fromarray(array, mode="L")
    # Big photos (retina is 1411 px) are shrunk once: every crop is resized down anyway, and
    # resizing from a smaller source is several times faster.
    longest = max(image.size)
    if longest > _MAX_PHOTO_SIDE:
        factor = _MAX_PHOTO_SIDE / longest
        new_size = (round(image.size[0] * factor), round(image.size[1] * factor))
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    return image


def _random_colour(rng: np.random.Generator, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """An RGB colour in [0, 255] float32, each channel uniform in [low, high] * 255."""
    return (rng.uniform(low, high, size=3) * 255.0).astype(np.float32)


def colourize(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a scalar field in [0, 1] (H x W float32) to H x W x 3 uint8 via a random palette.

    The palette is 2 or 3 random colours along the field, so a texture is never one flat colour
    but its colours are coherent (like a material), which keeps it plausible as an object.
    """
    stops = int(rng.integers(2, 4))
    colours = np.stack([_random_colour(rng) for _ in range(stops)])  # stops x 3
    # Make sure the palette is not nearly flat: push the last colour away from the first.
    if np.abs(colours[-1] - colours[0]).max() < 60.0:
        colours[-1] = 255.0 - colours[0]
    # A 256-entry lookup table: interpolating colours per pixel would cost several times more.
    levels = np.linspace(0.0, stops - 1, 256)
    lo = np.minimum(levels.astype(np.int32), stops - 2)
    frac = (levels - lo)[:, None]
    table = np.clip(colours[lo] * (1.0 - frac) + colours[lo + 1] * frac, 0, 255).astype(np.uint8)
    return table[(np.clip(field, 0.0, 1.0) * 255.0).astype(np.uint8)]


def _upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic upsampling of a small float32 grid to ``size`` = (H, W), done in C by Pillow."""
    height, width = size
    image = Image.fromarray(grid.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def _normalise(field: np.ndarray) -> np.ndarray:
    lo, hi = float(field.min()), float(field.max())
    if hi - lo < 1e-6:
        return np.zeros_like(field)
    return (field - lo) / (hi - lo)


def fractal_noise(
    rng: np.random.Generator,
    size: tuple[int, int],
    base_cells: float = 3.0,
    octaves: int = 4,
    persistence: float = 0.5,
) -> np.ndarray:
    """Perlin-like fractal value noise in [0, 1], H x W float32.

    Octave ``o`` is a grid of random values with ``base_cells * 2**o`` cells along the shorter
    side and weight ``persistence**o``. The octaves are summed coarse to fine, upsampling the
    running sum to each finer grid, so only the last step works at full resolution.
    """
    height, width = size
    short = min(height, width)
    total: np.ndarray | None = None
    for octave in range(octaves):
        cells = base_cells * (2**octave)
        grid_h = max(2, int(np.ceil(cells * height / short)) + 1)
        grid_w = max(2, int(np.ceil(cells * width / short)) + 1)
        if grid_h >= height or grid_w >= width:
            break  # finer than a pixel: nothing left to add
        grid = (persistence**octave) * rng.random((grid_h, grid_w), dtype=np.float32)
        total = grid if total is None else _upsample(total, (grid_h, grid_w)) + grid
    if total is None:
        return rng.random(size, dtype=np.float32)
    return _normalise(_upsample(total, size))


def _coords(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    return ys, xs


def stripes_field(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Oriented stripes (period 6..40 px), optionally warped by noise; [0, 1] H x W float32."""
    ys, xs = _coords(size)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(6.0, 40.0)
    phase = xs * np.cos(theta) + ys * np.sin(theta)
    if rng.random() < 0.6:
        phase = phase + rng.uniform(5.0, 25.0) * fractal_noise(rng, size, 2.0, 2)
    wave = 0.5 + 0.5 * np.sin(phase * (2 * np.pi / period))
    if rng.random() < 0.5:  # hard-edged stripes
        wave = (wave > 0.5).astype(np.float32)
    return wave.astype(np.float32)


def checker_field(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A rotated checkerboard (cells 8..48 px); {0, 1} H x W float32."""
    ys, xs = _coords(size)
    theta = rng.uniform(0, np.pi / 2)
    cell = rng.uniform(8.0, 48.0)
    u = (xs * np.cos(theta) + ys * np.sin(theta)) / cell
    v = (-xs * np.sin(theta) + ys * np.cos(theta)) / cell
    return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)


def gradient_field(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A linear or radial gradient with mild noise; [0, 1] H x W float32."""
    height, width = size
    ys, xs = _coords(size)
    if rng.random() < 0.5:
        theta = rng.uniform(0, 2 * np.pi)
        field = xs * np.cos(theta) + ys * np.sin(theta)
    else:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        field = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
    field = _normalise(field.astype(np.float32))
    return _normalise(field + 0.25 * fractal_noise(rng, size, 4.0, 3))


def grain_field(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Fine high-frequency grain over a coarse blotch pattern; [0, 1] H x W float32."""
    coarse = fractal_noise(rng, size, rng.uniform(4.0, 10.0), 3, 0.6)
    fine = rng.random(size, dtype=np.float32)
    return _normalise(0.6 * coarse + 0.4 * fine)


def random_texture(
    rng: np.random.Generator, size: tuple[int, int], kind: str | None = None
) -> np.ndarray:
    """A procedural colour texture, H x W x 3 uint8.

    ``kind`` is one of ``TEXTURE_KINDS`` or None for a random one. A little fractal noise is
    always mixed into the colours so no texture is perfectly flat or perfectly periodic.
    Textures of 96 px and more are drawn at half size and upsampled (bilinear): 4x cheaper, and
    camera-like softness is no harm.
    """
    if kind is None:
        kind = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    out_size = size
    if min(size) >= 96:
        size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    if kind == "fractal":
        field = fractal_noise(rng, size, rng.uniform(1.5, 8.0), 5, rng.uniform(0.45, 0.75))
    elif kind == "stripes":
        field = stripes_field(rng, size)
    elif kind == "checker":
        field = checker_field(rng, size)
    elif kind == "gradient":
        field = gradient_field(rng, size)
    elif kind == "grain":
        field = grain_field(rng, size)
    else:
        raise InputError("kind", f"unknown texture kind {kind!r}; expected one of {TEXTURE_KINDS}")
    colours = colourize(field, rng).astype(np.float32)
    shade = 0.8 + 0.4 * fractal_noise(rng, size, 2.0, 2)
    pixels = np.clip(colours * shade[..., None], 0, 255).astype(np.uint8)
    if size != out_size:
        image = Image.fromarray(pixels, mode="RGB")
        pixels = np.asarray(image.resize((out_size[1], out_size[0]), Image.Resampling.BILINEAR))
    return pixels


def _tint(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greyscale H x W uint8 -> H x W x 3 uint8 through a random dark-to-bright colour ramp."""
    dark = _random_colour(rng, 0.0, 0.45)
    bright = _random_colour(rng, 0.55, 1.0)
    frac = np.arange(256, dtype=np.float32)[:, None] / 255.0
    table = np.clip(dark + (bright - dark) * frac, 0, 255).astype(np.uint8)  # 256 x 3
    return table[grey]


def photo_patch(
    rng: np.random.Generator, size: tuple[int, int], split: Split, name: str | None = None
) -> np.ndarray:
    """A random crop of a random photo of ``split``, resized to ``size`` = (H, W); H x W x 3 uint8.

    The crop covers 35-100 % of the photo's shorter side (so scale varies), is flipped half the
    time, and greyscale photos are tinted with a random colour ramp.
    """
    names = image_names(split)
    if name is None:
        name = names[int(rng.integers(len(names)))]
    elif name not in names:
        raise InputError(f"skimage.data.{name}", f"is not in the {split!r} split")
    image = load_image(name)
    out_h, out_w = size
    src_w, src_h = image.size
    aspect = out_w / out_h
    frac = rng.uniform(0.35, 1.0)
    crop_h = frac * min(src_h, src_w / aspect)
    crop_w = crop_h * aspect
    x0 = rng.uniform(0, src_w - crop_w)
    y0 = rng.uniform(0, src_h - crop_h)
    box = (x0, y0, x0 + crop_w, y0 + crop_h)
    patch = np.asarray(image.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if patch.ndim == 2:
        patch = _tint(patch, rng)
    return np.ascontiguousarray(patch)


def random_source(
    rng: np.random.Generator, size: tuple[int, int], split: Split, texture_prob: float = 0.4
) -> np.ndarray:
    """Imagery for a background or an object: a photo patch or, with ``texture_prob``, a texture.

    Returns H x W x 3 uint8.
    """
    image_names(split)  # validates the split name
    if rng.random() < texture_prob:
        return random_texture(rng, size)
    return photo_patch(rng, size, split)


def linear_colour(pixels: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``out = matrix @ rgb + offset`` per pixel, clipped; H x W x 3 uint8 -> same.

    Runs in Pillow's C code (``convert("RGB", matrix)``), several times faster than float numpy;
    brightness, contrast, saturation and channel gains are all of this form.
    """
    coeffs = np.concatenate([np.asarray(matrix, np.float64), np.asarray(offset)[:, None]], axis=1)
    image = Image.fromarray(pixels, mode="RGB").convert("RGB", tuple(coeffs.ravel().tolist()))
    return np.asarray(image)


def jitter_matrix(
    mean: np.ndarray,
    contrast: float,
    brightness: float,
    saturation: float,
    gains: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The (3 x 3 matrix, 3 offset) for ``linear_colour`` that applies, in order: contrast about
    the image's mean colour ``mean`` (3,), saturation about the grey level, brightness, and
    per-channel ``gains`` (3,). All factors are multiplicative (1 = unchanged)."""
    grey = np.full((3, 3), 1.0 / 3.0)
    saturate = saturation * np.eye(3) + (1.0 - saturation) * grey
    scale = np.diag(np.asarray(gains, np.float64) * brightness)
    matrix = scale @ saturate * contrast
    offset = scale @ saturate @ ((1.0 - contrast) * np.asarray(mean, np.float64))
    return matrix, offset


RECOLOUR_KINDS: tuple[str, ...] = ("hue", "channels", "palette")


def hue_rotation(angle: float) -> np.ndarray:
    """3 x 3 matrix rotating RGB colours by ``angle`` radians about the grey axis (hue shift
    that keeps greys grey)."""
    cos, sin = math.cos(angle), math.sin(angle)
    third, root = 1.0 / 3.0, math.sqrt(1.0 / 3.0)
    a = cos + (1.0 - cos) * third
    b = third * (1.0 - cos) - root * sin
    c = third * (1.0 - cos) + root * sin
    return np.array([[a, b, c], [c, a, b], [b, c, a]])


def recolour(pixels: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """Repaint imagery in colours its photo never had; H x W x 3 uint8 -> same.

    Why: there are only a dozen training photos, so a network can learn "this photo's colours are
    an object" instead of matching what the memory frame shows; the held-out photos then fool it.
    Repainting keeps a photo's structure (edges, texture, shading) and changes its colours:
    ``hue`` rotates hues by 60-300 degrees, ``channels`` permutes R, G, B (never the identity),
    ``palette`` maps the luminance through a random 2-3 colour ramp (see ``colourize``).
    """
    if kind is None:
        kind = RECOLOUR_KINDS[int(rng.integers(len(RECOLOUR_KINDS)))]
    if kind == "hue":
        angle = rng.uniform(math.pi / 3, 5 * math.pi / 3)
        return linear_colour(pixels, hue_rotation(angle), np.zeros(3))
    if kind == "channels":
        orders = [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
        order = orders[int(rng.integers(len(orders)))]
        return np.ascontiguousarray(pixels[..., list(order)])
    if kind == "palette":
        luminance = Image.fromarray(pixels, mode="RGB").convert("L")
        return colourize(np.asarray(luminance, dtype=np.float32) / 255.0, rng)
    raise InputError("kind", f"unknown recolour kind {kind!r}; expected one of {RECOLOUR_KINDS}")
