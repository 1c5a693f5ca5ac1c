"""Stage 1 of STM training (paper, Sec. 4): fake video clips made from single images.

Why: the paper pre-trains on image segmentation data by warping one image and its masks with a
different random affine per frame, so the network learns to match an object across appearance
changes before it sees real video. Here the images come from ``procedural_pair`` (objects pasted
on photo or texture backgrounds, the same machinery as ``synthetic_video``) or from any caller.

``static_clip`` returns ``frames`` T x H x W x 3 uint8 and ``masks`` T x H x W uint8 with ids
1..k (k <= max_objects) for the objects kept; objects not kept become background (0).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from PIL import Image

from ..errors import InputError
from .synthetic_video import plan_video, random_shape, render_frame, split_rng
from .textures import Split, jitter_matrix, linear_colour, random_texture

logger = logging.getLogger(__name__)

_PAIR_PURPOSE = 2


def _check_pair(image: np.ndarray, masks: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError("image", f"must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    if masks.shape != image.shape[:2]:
        raise InputError("masks", f"must be H x W = {image.shape[:2]}, got {masks.shape}")
    if not np.issubdtype(masks.dtype, np.integer):
        raise InputError("masks", f"must hold integer object ids, got dtype {masks.dtype}")
    if masks.size and (int(masks.min()) < 0 or int(masks.max()) > 255):
        raise InputError("masks", "object ids must be in 0..255")


def keep_objects(
    masks: np.ndarray,
    rng: np.random.Generator,
    max_objects: int,
    min_pixels: int,
    keep_all: bool = False,
) -> np.ndarray | None:
    """Pick 1..max_objects of the objects with at least ``min_pixels`` pixels in ``masks[0]``
    and remap them to ids 1..k (in random order); every other id becomes 0. ``keep_all`` keeps
    the first ``max_objects`` of them in id order instead (first-frame fine-tuning: an object
    dropped from a clip would be taught as background), and draws nothing from ``rng``.

    ``masks`` is T x H x W uint8. Returns the remapped T x H x W uint8, or None when no object
    is big enough in the first frame (the caller then draws a new crop).
    """
    counts = np.bincount(masks[0].ravel(), minlength=256)
    candidates = [i for i in range(1, 256) if counts[i] >= min_pixels]
    if not candidates:
        return None
    if keep_all:
        chosen_in_order = candidates[:max_objects]
        lut = np.zeros(256, np.uint8)
        lut[chosen_in_order] = np.arange(1, len(chosen_in_order) + 1, dtype=np.uint8)
        return lut[masks]
    k = int(rng.integers(1, min(max_objects, len(candidates)) + 1))
    chosen = rng.choice(candidates, size=k, replace=False)
    lut = np.zeros(256, np.uint8)
    lut[chosen] = np.arange(1, k + 1, dtype=np.uint8)
    return lut[masks]


def colour_jitter(
    frames: np.ndarray, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """Brightness, contrast, saturation and per-channel gain jitter, T x H x W x 3 uint8 -> same.

    One draw for the clip times a smaller draw per frame, so frames differ like lighting changes
    across a video. Factors are ``exp(uniform(-w, w) * strength)``; 0 strength = identity.
    """
    num = frames.shape[0]

    def draw(clip_width: float, frame_width: float, channels: int = 1) -> np.ndarray:
        clip = rng.uniform(-clip_width, clip_width, (1, channels))
        per_frame = rng.uniform(-frame_width, frame_width, (num, channels))
        return np.exp((clip + per_frame) * strength)  # num x channels

    contrast, brightness = draw(0.25, 0.08)[:, 0], draw(0.25, 0.08)[:, 0]
    saturation, gains = draw(0.35, 0.1)[:, 0], draw(0.08, 0.03, 3)
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        matrix, offset = jitter_matrix(
            # mean colour from every 4th pixel: a pivot, it need not be exact
            frame[::4, ::4].mean(axis=(0, 1)),
            contrast[t],
            brightness[t],
            saturation[t],
            gains[t],
        )
        out[t] = linear_colour(frame, matrix, offset)
    return out


def crop_origin(
    lo_needed: float, hi_needed: float, extent: int, crop: int, rng: np.random.Generator
) -> int:
    """A crop start in [0, extent - crop] that puts [lo_needed, hi_needed) inside the crop when
    it fits, else keeps ``lo_needed`` (a pixel of the object) inside."""
    top = max(extent - crop, 0)
    if hi_needed - lo_needed <= crop:
        low, high = math.ceil(hi_needed - crop), math.floor(lo_needed)
    else:
        low, high = math.ceil(lo_needed - crop + 1), math.floor(lo_needed)
    low, high = max(low, 0), min(high, top)
    if low > high:
        return int(min(max(lo_needed - crop / 2, 0), top))
    return int(rng.integers(low, high + 1))


def inverse_affine(
    anchor_src: np.ndarray, anchor_out: np.ndarray, scale: float, angle: float, shear: float
) -> tuple[float, ...]:
    """PIL AFFINE coefficients for the map output px -> source px that sends ``anchor_out`` to
    ``anchor_src``; the forward map (source -> output) is ``scale * R(angle) @ [[1, shear], [0,
    1]]``."""
    forward = (
        scale
        * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        @ np.array([[1.0, shear], [0.0, 1.0]])
    )
    inv = np.linalg.inv(forward)
    offset = anchor_src - inv @ anchor_out
    return (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])


def _occlude(
    frame: np.ndarray, labels: np.ndarray, rng: np.random.Generator, source: np.ndarray
) -> None:
    """Paste a random shape cut from ``source`` (or a texture) over a kept object, in place; the
    covered pixels become background in ``labels``."""
    height, width = labels.shape
    radius = min(height, width) * rng.uniform(0.08, 0.2)
    side = int(math.ceil(radius * 3.4)) + 4
    alpha = random_shape(rng, radius, side)
    if rng.random() < 0.5 and source.shape[0] > side and source.shape[1] > side:
        y = int(rng.integers(0, source.shape[0] - side))
        x = int(rng.integers(0, source.shape[1] - side))
        patch = source[y : y + side, x : x + side].astype(np.float32)
    else:
        patch = random_texture(rng, (side, side)).astype(np.float32)
    ys, xs = np.nonzero(labels)
    if len(ys):
        pick = int(rng.integers(len(ys)))
        cy, cx = ys[pick], xs[pick]
    else:
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, x0 = cy - side // 2, cx - side // 2
    fy0, fx0 = max(y0, 0), max(x0, 0)
    fy1, fx1 = min(y0 + side, height), min(x0 + side, width)
    if fy1 <= fy0 or fx1 <= fx0:
        return
    a = alpha[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0, None]
    p = patch[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    frame[fy0:fy1, fx0:fx1] = np.clip(p * a + region * (1 - a), 0, 255).astype(np.uint8)
    labels[fy0:fy1, fx0:fx1][a[..., 0] >= 0.5] = 0


def static_clip(
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    num_frames: int = 3,
    crop: tuple[int, int] = (384, 384),
    max_objects: int = 3,
    occlusion_prob: float = 0.3,
    min_pixels: int | None = None,
    max_tries: int = 10,
    keep_all: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``num_frames`` clip from one image and its label map (paper's stage 1).

    ``image`` H x W x 3 uint8, ``masks`` H x W integer ids (0 = background). A base view scales
    the image to 1-1.4x what covers ``crop`` = (H, W), rotates it up to +-11 degrees and places
    the window inside the image over a random object. Each frame then gets its own affine about
    the view (rotation up to +-15 degrees, zoom x0.9-1.17, shear up to 0.15, shift up to 6 % of
    the crop); corners that fall outside the image are black. Then colour jitter, and with
    ``occlusion_prob`` a random patch pasted over an object on one of the frames after the
    first. Objects with
    fewer than ``min_pixels`` (default 0.2 % of the crop, at least 16) pixels in frame 0 are
    dropped; 1..``max_objects`` of the rest are kept and renumbered 1..k (all of them, in id
    order, with ``keep_all``: see ``keep_objects``).

    Returns (frames T x H x W x 3 uint8, masks T x H x W uint8). Raises InputError if the image
    has no object or none survives ``max_tries`` crops.
    """
    _check_pair(image, masks)
    if num_frames < 1 or max_objects < 1:
        raise InputError("static_clip", "num_frames and max_objects must be >= 1")
    ids = np.unique(masks)
    ids = ids[ids > 0]
    if len(ids) == 0:
        raise InputError("masks", "has no object (all pixels are 0)")
    crop_h, crop_w = crop
    if min_pixels is None:
        min_pixels = max(16, int(0.002 * crop_h * crop_w))
    src_h, src_w = masks.shape
    picture = Image.fromarray(image, mode="RGB")
    label_image = Image.fromarray(masks.astype(np.uint8), mode="L")
    cover = max(crop_h / src_h, crop_w / src_w)
    centre_out = np.array([crop_w / 2, crop_h / 2])
    crop_size = np.array([crop_w, crop_h])

    for _ in range(max_tries):
        # Base view: the image scaled to cover the crop, the window placed (inside the image)
        # over a random object's box, or over one of its pixels when the box is too big.
        scale = cover * rng.uniform(1.0, 1.4)
        anchor_id = ids[int(rng.integers(len(ids)))]
        ys, xs = np.nonzero(masks == anchor_id)
        x0 = crop_origin(xs.min() * scale, (xs.max() + 1) * scale, int(src_w * scale), crop_w, rng)
        y0 = crop_origin(ys.min() * scale, (ys.max() + 1) * scale, int(src_h * scale), crop_h, rng)
        centre_src = (np.array([x0, y0]) + centre_out) / scale
        base_angle = rng.uniform(-0.2, 0.2)
        frames = np.empty((num_frames, crop_h, crop_w, 3), np.uint8)
        labels = np.empty((num_frames, crop_h, crop_w), np.uint8)
        for t in range(num_frames):
            # Each frame: its own rotation (+-15 deg), zoom, shear and shift about the view.
            shift = rng.uniform(-0.06, 0.06, 2) * crop_size
            coeffs = inverse_affine(
                centre_src,
                centre_out + shift,
                scale * math.exp(rng.uniform(-0.1, 0.16)),
                base_angle + rng.uniform(-0.26, 0.26),
                rng.uniform(-0.15, 0.15),
            )
            frames[t] = np.asarray(
                picture.transform(
                    (crop_w, crop_h),
                    Image.Transform.AFFINE,
                    coeffs,
                    Image.Resampling.BILINEAR,
                )
            )
            labels[t] = np.asarray(
                label_image.transform(
                    (crop_w, crop_h),
                    Image.Transform.AFFINE,
                    coeffs,
                    Image.Resampling.NEAREST,
                )
            )
        kept = keep_objects(labels, rng, max_objects, min_pixels, keep_all)
        if kept is None:
            continue
        frames = colour_jitter(frames, rng)
        if num_frames > 1 and rng.random() < occlusion_prob:
            t = int(rng.integers(1, num_frames))
            _occlude(frames[t], kept[t], rng, image)
        return frames, kept
    raise InputError("masks", f"no object stayed visible in frame 0 after {max_tries} crops")


def procedural_pair(
    seed: int,
    size: tuple[int, int],
    num_objects: int | None = None,
    split: Split = "train",
    recolour_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """An (image H x W x 3 uint8, label map H x W uint8) pair: objects pasted on a background.

    A one-frame synthetic video with a still camera (see ``synthetic_video``): photo/texture
    background
    with unlabelled distractors, ``num_objects`` labelled shapes (1..4 drawn from the seed when
    None) that may overlap. Deterministic from (seed, split); ``recolour_prob`` as in
    ``plan_video``.
    """
    if num_objects is None:
        num_objects = int(split_rng(seed, split, _PAIR_PURPOSE).integers(1, 5))
    plan = plan_video(
        seed, 1, size, num_objects, split, camera_motion=False, recolour_prob=recolour_prob
    )
    image, labels = render_frame(plan, 0)[:2]
    return image, labels
