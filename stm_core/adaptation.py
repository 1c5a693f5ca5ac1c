"""First-frame fine-tuning: adapt a copy of the model to one video's seed frames before
propagating it (OSVOS's online fine-tuning, Caelles et al. 2017, with the clip augmentation of
Lucid Data Dreaming, Khoreva et al. 2017).

Why: a model trained from random weights on synthetic clips confuses a new video's objects
with look-alike parts of its background and loses objects whose parts look different (a
two-tone object kept only one tone). The seed masks say exactly what each object and the
background look like in this video; a few dozen optimiser steps on 3-frame clips made from the
seed frames (the paper's static-image clips: random affine warps, crops, colour jitter,
occlusion; and clips whose objects move on their own, :mod:`stm_core.training.lucid_clips`)
teach the model this video's objects before it propagates them. What it gains, on the model
whose defaults were chosen (v4), is in docs/model_card.md; how they were chosen, in
docs/experiments.md.

The caller's model is never changed: :func:`adapt_to_seeds` returns a fine-tuned copy, so one
loaded checkpoint serves every video of a corpus. BatchNorm stays frozen (running statistics,
no affine updates): a batch of clips from one image is far too uniform to estimate them.
Deterministic for a given ``seed`` on the CPU.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .model.network import STM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adaptation:
    """How to fine-tune on a video's seeds. ``steps=0`` turns adaptation off.

    The defaults (80 steps of 4 clips of 3 frames as big as the seed frame, AdamW at 6e-5 with
    cosine decay, no weight decay) scored best of the settings tried on the held-out synthetic
    set, and the step count was checked on held-out videos that no choice looked at (the sweep
    and its numbers: docs/experiments.md). ``lucid_prob`` of
    the clips move each object on its own (:mod:`stm_core.training.lucid_clips`), the rest warp
    the whole frame (:func:`~stm_core.training.static_clips.static_clip`). ``crop=None`` (the
    default) makes every clip as big as the seed frame (its sides rounded down to multiples of
    16), so each clip holds every object and the whole background: the model learns to tell
    this video's objects from each other, not only from the background around one of them
    (whole-frame clips scored higher than 192 x 192 ones in the same sweep). A step costs in
    proportion to the frame's pixels (seconds per step: docs/benchmarks.md); a ``(H, W)`` crop
    is the cheaper choice for large frames.
    """

    steps: int = 80
    lr: float = 6e-5
    batch_size: int = 4
    crop: tuple[int, int] | None = None
    seed: int = 0
    bf16: bool | None = None  # None: where the device computes bfloat16 natively
    lucid_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise InputError("adaptation.steps", f"must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise InputError("adaptation.lr", f"must be > 0, got {self.lr}")
        if not 0.0 <= self.lucid_prob <= 1.0:
            raise InputError("adaptation.lucid_prob", f"must be in [0, 1], got {self.lucid_prob}")
        if self.batch_size < 1:
            raise InputError("adaptation.batch_size", f"must be >= 1, got {self.batch_size}")
        if self.crop is not None and (
            len(self.crop) != 2 or any(c < 16 or c % 16 for c in self.crop)
        ):
            raise InputError("adaptation.crop", f"must be two multiples of 16, got {self.crop}")

    @property
    def enabled(self) -> bool:
        return self.steps > 0


def parse_crop(text: str) -> tuple[int, int] | None:
    """A command line's clip size: ``frame`` (the whole seed frame, ``crop=None``) or ``HxW``
    in pixels, e.g. ``192x192``."""
    if text.strip().lower() == "frame":
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(
            "adaptation crop", f"expected 'frame' or HxW such as 192x192, got {text!r}"
        )
    return int(parts[0]), int(parts[1])


def adapt_to_seeds(
    model: STM,
    seed_frames: Mapping[int, np.ndarray],
    seeds: Mapping[int, np.ndarray],
    adaptation: Adaptation,
    on_step: Callable[[int, int], None] | None = None,
) -> STM:
    """A copy of ``model`` fine-tuned on clips made from the seed frames, in eval mode.

    ``seed_frames``: frame index -> H x W x 3 uint8 RGB, one for every key of ``seeds`` (frame
    index -> H x W label map, as :func:`stm_core.propagate` takes them). Each clip comes from
    one seed frame, drawn uniformly, and keeps every object seeded there that stays in view:
    an object left out of a clip would be taught as background. (A frame's seed holds only the
    objects that first appear on it, so objects seeded earlier and still visible there count as
    background in its clips; seeding all objects on one frame avoids that.) Returns ``model``
    itself when adaptation is off.
    """
    from .training.datasets import collate_clips
    from .training.loop import Trainer

    if not adaptation.enabled:
        return model
    if not seeds:
        raise InputError(None, "adaptation needs at least one seed mask")
    missing = sorted(set(seeds) - set(seed_frames))
    if missing:
        raise InputError(None, f"adaptation needs the images of seed frames {missing}")
    pairs = []
    for t in sorted(seeds):
        frame, mask = np.asarray(seed_frames[t]), np.asarray(seeds[t])
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"frame {t}", f"must be H x W x 3 uint8, got {frame.shape}")
        if mask.shape != frame.shape[:2]:
            raise InputError(
                f"seed {t}", f"mask is {mask.shape} but its frame is {frame.shape[:2]}"
            )
        if mask.any():
            pairs.append((frame, mask.astype(np.uint8)))
    if not pairs:
        raise InputError(None, "every seed mask is empty: nothing to adapt to")
    max_objects = max(int(np.count_nonzero(np.bincount(m.ravel())[1:])) for _, m in pairs)
    crop = adaptation.crop or _frame_crop(pairs[0][0].shape[:2])

    device = next(model.parameters()).device
    tuned = copy.deepcopy(model)
    for p in tuned.parameters():
        p.requires_grad_(True)
    trainer = Trainer(
        tuned,
        lr=adaptation.lr,
        weight_decay=0.0,
        warmup_steps=0,
        total_steps=adaptation.steps,
        freeze_bn=True,
        device=device,
        bf16=adaptation.bf16,
    )
    rng = np.random.default_rng(adaptation.seed)
    with torch.enable_grad():
        for step in range(1, adaptation.steps + 1):
            items = [
                _clip_item(pairs, rng, adaptation.lucid_prob, crop, max_objects)
                for _ in range(adaptation.batch_size)
            ]
            trainer.train_step(collate_clips(items, max_objects))
            if on_step is not None:
                on_step(step, adaptation.steps)
    logger.debug("adapted for %d steps, last loss %.4f", adaptation.steps, trainer.history[-1][1])
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned.eval()


_CLIP_TRIES = 20


def _frame_crop(size: tuple[int, ...]) -> tuple[int, int]:
    """The largest clip size (multiples of 16) that fits in a seed frame."""
    h, w = size[0], size[1]
    if h < 16 or w < 16:
        raise InputError(None, f"a seed frame of {w}x{h} (W x H) is too small to adapt on")
    return h - h % 16, w - w % 16


def _clip_item(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    lucid_prob: float,
    crop: tuple[int, int],
    max_objects: int,
) -> dict[str, torch.Tensor | int]:
    """One training clip (``ClipDataset`` item layout) from a random seed frame.

    Any object with a few pixels left in the clip's first frame counts, so a small seeded
    object still trains; a draw in which every object is warped out of view is redrawn.
    """
    from .training.datasets import clip_item
    from .training.lucid_clips import lucid_clip
    from .training.static_clips import static_clip

    for _ in range(_CLIP_TRIES):
        frame, mask = pairs[int(rng.integers(len(pairs)))]
        try:
            if lucid_prob > 0.0 and rng.random() < lucid_prob:
                frames, labels = lucid_clip(frame, mask, rng, 3, crop, max_objects)
            else:
                frames, labels = static_clip(
                    frame, mask, rng, 3, crop, max_objects, min_pixels=4, keep_all=True
                )
        except InputError:
            continue
        return clip_item(frames, labels)
    raise InputError(None, f"no seed object stayed in view in {_CLIP_TRIES} adaptation clips")
