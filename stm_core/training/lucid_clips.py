"""Clips whose objects move on their own, dreamt from one annotated frame (the idea of Lucid
Data Dreaming, Khoreva et al. 2017, without its learned inpainting).

Why: :func:`~stm_core.training.static_clips.static_clip` warps the whole image at once, so in
its clips the objects keep their places relative to each other: they never cross, never cover
each other differently, never leave the view. Those are the failures left after first-frame
fine-tuning (an object leaves and its label jumps onto another object; two objects cross and
swap labels). Here every object is cut out of the view, the hole is filled from the surrounding
background, and each object is pasted back on every later frame with its own drift, rotation and
scale, in a random depth order, so objects pass over each other and may leave the crop; the
background moves a little, like a camera.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .static_clips import inverse_affine, static_clip

_FILL_SIGMAS = (3.0, 9.0, 27.0, 81.0)


def fill_holes(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``image`` (H x W x 3 uint8) with the ``hole`` pixels replaced by a smooth continuation of
    the pixels around them (normalized convolution, widening until every pixel is filled)."""
    if not hole.any():
        return image.copy()
    known = (~hole).astype(np.float32)
    if not known.any():
        return np.full_like(image, 127)
    pixels = image.astype(np.float32)
    out = pixels.copy()
    remaining = hole.copy()
    for sigma in _FILL_SIGMAS:
        weight = gaussian_filter(known, sigma)
        reached = remaining & (weight > 1e-3)
        if reached.any():
            for c in range(3):
                blurred = gaussian_filter(pixels[..., c] * known, sigma)
                out[..., c][reached] = blurred[reached] / weight[reached]
            remaining &= ~reached
        if not remaining.any():
            break
    out[remaining] = pixels[~hole].mean(axis=0)
    return np.clip(out, 0, 255).astype(np.uint8)


def lucid_clip(
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    num_frames: int = 3,
    crop: tuple[int, int] = (192, 192),
    max_objects: int = 3,
    min_pixels: int = 4,
    max_drift: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """A clip whose frame 0 is a static-clip view of ``image`` (every object kept, as
    ``keep_all``) and whose later frames move each object independently.

    Per object: a drift of up to ``max_drift`` of the crop per frame in each direction, a turn
    of up to 0.15 rad and a zoom of up to x1.12 per frame, compounding over the clip. The
    background shifts by up to 3 % of the crop per frame. Objects are pasted in a random
    depth order, so the later ones cover the earlier ones; an object that drifts out of the crop
    is simply absent from the labels there. Returns (frames T x H x W x 3 uint8, masks T x H x W
    uint8 with ids 1..k); raises InputError as ``static_clip`` does.
    """
    view_frames, view_labels = static_clip(
        image,
        masks,
        rng,
        1,
        crop,
        max_objects,
        occlusion_prob=0.0,
        min_pixels=min_pixels,
        keep_all=True,
    )
    view, labels0 = view_frames[0], view_labels[0]
    crop_h, crop_w = labels0.shape
    ids = [int(k) for k in np.unique(labels0) if k]
    background = Image.fromarray(fill_holes(view, labels0 > 0))
    cutouts = {}
    for k in ids:
        rgba = np.dstack([view, np.where(labels0 == k, 255, 0).astype(np.uint8)])
        ys, xs = np.nonzero(labels0 == k)
        cutouts[k] = (Image.fromarray(rgba, mode="RGBA"), np.array([xs.mean(), ys.mean()]))
    size = np.array([crop_w, crop_h], dtype=np.float64)
    motion = {
        k: (
            rng.uniform(-max_drift, max_drift, 2) * size,  # drift per frame, px
            rng.uniform(-0.15, 0.15),  # turn per frame, rad
            math.exp(rng.uniform(-0.12, 0.12)),  # zoom per frame
        )
        for k in ids
    }
    camera = rng.uniform(-0.03, 0.03, 2) * size
    order = [ids[i] for i in rng.permutation(len(ids))]

    frames = np.empty((num_frames, crop_h, crop_w, 3), np.uint8)
    out_labels = np.zeros((num_frames, crop_h, crop_w), np.uint8)
    frames[0], out_labels[0] = view, labels0
    centre = size / 2
    for t in range(1, num_frames):
        pan = camera * t
        canvas = np.asarray(
            background.transform(
                (crop_w, crop_h),
                Image.Transform.AFFINE,
                inverse_affine(centre, centre + pan, 1.0, 0.0, 0.0),
                Image.Resampling.BILINEAR,
                fillcolor=tuple(int(v) for v in np.asarray(background).mean(axis=(0, 1))),
            ),
            dtype=np.float32,
        ).copy()
        labels = out_labels[t]
        for k in order:
            cutout, anchor = cutouts[k]
            drift, turn, zoom = motion[k]
            moved = np.asarray(
                cutout.transform(
                    (crop_w, crop_h),
                    Image.Transform.AFFINE,
                    inverse_affine(anchor, anchor + pan + drift * t, zoom**t, turn * t, 0.0),
                    Image.Resampling.BILINEAR,
                ),
                dtype=np.float32,
            )
            alpha = moved[..., 3:] / 255.0
            canvas = moved[..., :3] * alpha + canvas * (1.0 - alpha)
            labels[alpha[..., 0] >= 0.5] = k
        frames[t] = np.clip(canvas, 0, 255).astype(np.uint8)
    return frames, out_labels
