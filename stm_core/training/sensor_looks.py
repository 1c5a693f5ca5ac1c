"""Clip-wide sensor looks for training: dim, low-contrast, desaturated or monochrome, grainy.

Why: the synthetic imagery is mostly well lit and colourful, and heavy repainting
(``recolour_prob``) made a model that found nothing in dark green monochrome footage (the v3
candidate, see docs/experiments.md). Real footage is often dark, washed out, infrared or
tinted. ``sensor_look`` draws one such look per clip and applies it to every frame of it, the
way one camera films a whole shot; only the grain differs from frame to frame.

It is a family, not the evaluation look: ``domains.night_vision`` is one fixed point of it
(green tint, about 0.12 + 0.45 * luma^0.7, grain 0.05), and a clip lands near it only by chance.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def sensor_look(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``frames`` T x H x W x 3 uint8 -> the same clip seen through one random sensor look.

    Per clip: saturation 0..0.6 (monochrome half the time) with a random tint, a tone curve
    ``floor + gain * x^gamma`` (floor 0..0.25, gain 0.25..0.8, gamma 0.5..1.5: dim and flat),
    then per-frame Gaussian grain with sigma 0..0.07.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(
            "frames", f"expected T x H x W x 3 uint8, got {frames.shape} {frames.dtype}"
        )
    pixels = frames.astype(np.float32) * np.float32(1.0 / 255.0)
    luma = (pixels @ _LUMA)[..., None]
    saturation = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 0.6))
    pixels = luma + saturation * (pixels - luma)
    tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    tint /= tint.max()
    floor, gain, gamma = rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.8), rng.uniform(0.5, 1.5)
    pixels = (floor + gain * np.power(np.clip(pixels, 0.0, 1.0), gamma)) * tint
    sigma = rng.uniform(0.0, 0.07)
    if sigma > 0.0:
        grain = rng.normal(0.0, sigma, pixels.shape[:-1]).astype(np.float32)[..., None]
        pixels = pixels + grain
    return np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
