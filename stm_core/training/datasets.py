"""Torch datasets over the synthetic and on-disk clip samplers, and the batch collate.

Why a map-style dataset: item ``i`` is a pure function of (seed, i, stage, max_skip), so a
DataLoader with any number of workers, any shuffling and any restart gives the same samples, and a
failed training step can be replayed exactly.

Curriculum: ``set_max_skip`` changes what later items look like. DataLoader workers hold a copy of
the dataset, so call it before creating the epoch's iterator (and do not use
``persistent_workers=True`` with a growing skip).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .photo_clips import PhotoPair, PhotoSource, photo_clip
from .sensor_looks import sensor_look
from .static_clips import procedural_pair, static_clip
from .synthetic_video import plan_video
from .textures import Split
from .video_clips import FolderVideoSource, RenderedVideo, sample_video_clip

logger = logging.getLogger(__name__)

Stage = Literal["static", "video"]
_RETRIES = 5
_LOOK_TAG = 7  # the sensor-look stream of an item: its other draws stay as they were
_PHOTO_TAG = 8  # the stream that decides whether an item is a real-photo clip


class ClipDataset(Dataset):
    """Training clips as tensors: ``frames`` float32 T x 3 x H x W in [0, 1], ``masks`` int64
    T x H x W (0 = background, 1..k), ``num_objects`` k in 1..max_objects.

    - ``stage="static"``: paper's stage 1, ``static_clip`` of a ``procedural_pair`` drawn at
      1.0-1.25x the crop size.
    - ``stage="video"``: paper's stage 2, ``sample_video_clip`` from a crop-sized synthetic
      video of ``video_length`` frames (longer if the skip needs it; only the sampled frames
      are rendered) or, with probability ``source_prob``, from a random video of ``sources``
      (on-disk DAVIS / YouTube-VOS folders, scaled by ``scale_range``).

    ``recolour_prob`` repaints synthetic imagery (``plan_video``): more colours than the photos
    have, so matching by colour is learnt instead of remembering the photos.
    ``lookalike_prob`` adds object-sized unlabelled distractors to synthetic videos
    (``plan_video``); ``sensor_look_prob`` films a clip through a dim, flat, tinted or grainy
    sensor (``sensor_looks.sensor_look``). Each draws from its own stream, so at 0 every item is
    what it was.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        stage: Stage = "video",
        crop: tuple[int, int] = (256, 256),
        num_frames: int = 3,
        max_objects: int = 3,
        max_skip: int = 0,
        video_length: int = 40,
        sources: Sequence[FolderVideoSource] = (),
        source_prob: float = 0.5,
        scale_range: tuple[float, float] | None = None,
        split: Split = "train",
        recolour_prob: float = 0.0,
        lookalike_prob: float = 0.0,
        sensor_look_prob: float = 0.0,
        photos: Sequence[PhotoSource] = (),
        photo_prob: float = 0.0,
    ) -> None:
        if length < 1:
            raise InputError("length", f"must be >= 1, got {length}")
        if stage not in ("static", "video"):
            raise InputError("stage", f"must be 'static' or 'video', got {stage!r}")
        if not 1 <= max_objects <= 255:
            raise InputError("max_objects", f"must be in 1..255, got {max_objects}")
        self.length = length
        self.seed = seed
        self.stage: Stage = stage
        self.crop = (int(crop[0]), int(crop[1]))
        self.num_frames = num_frames
        self.max_objects = max_objects
        self.max_skip = max_skip
        self.video_length = video_length
        self.videos = [video for source in sources for video in source.videos]
        self.source_prob = source_prob
        self.scale_range = scale_range
        self.split: Split = split
        for name, prob in (
            ("recolour_prob", recolour_prob),
            ("lookalike_prob", lookalike_prob),
            ("sensor_look_prob", sensor_look_prob),
            ("photo_prob", photo_prob),
        ):
            if not 0.0 <= prob <= 1.0:
                raise InputError(name, f"must be in [0, 1], got {prob}")
        self.recolour_prob = recolour_prob
        self.lookalike_prob = lookalike_prob
        self.sensor_look_prob = sensor_look_prob
        self.photo_pairs: list[PhotoPair] = [pair for source in photos for pair in source.pairs]
        if photo_prob > 0.0 and not self.photo_pairs:
            raise InputError("photo_prob", f"is {photo_prob} but no photo source was given")
        self.photo_prob = photo_prob

    def __len__(self) -> int:
        return self.length

    def set_max_skip(self, max_skip: int) -> None:
        """Set the curriculum's largest skip (see ``max_skip_schedule``)."""
        if max_skip < 0:
            raise InputError("max_skip", f"must be >= 0, got {max_skip}")
        self.max_skip = max_skip

    def _scaled_size(self, rng: np.random.Generator) -> tuple[int, int]:
        """Synthetic pictures and videos are drawn a little larger than the crop so crops vary;
        not much larger, since drawing time grows with the area."""
        factor = rng.uniform(1.0, 1.25)
        return int(self.crop[0] * factor), int(self.crop[1] * factor)

    def _static(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(_RETRIES):
            pair_seed = int(rng.integers(2**31))
            image, labels = procedural_pair(
                pair_seed, self._scaled_size(rng), None, self.split, self.recolour_prob
            )
            try:
                return static_clip(image, labels, rng, self.num_frames, self.crop, self.max_objects)
            except InputError as err:  # every object hidden: draw another picture
                logger.debug("static pair %d unusable: %s", pair_seed, err)
        raise InputError("ClipDataset", f"{_RETRIES} procedural pairs in a row were unusable")

    def _photo(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(_RETRIES):
            try:
                return photo_clip(
                    self.photo_pairs, rng, self.num_frames, self.crop, self.max_objects
                )
            except InputError as err:  # unreadable / empty file, or no object left in view
                logger.warning("photo clip skipped: %s", err)
        raise InputError("ClipDataset", f"{_RETRIES} photo clips in a row were unusable")

    def _video(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(_RETRIES):
            if self.videos and rng.random() < self.source_prob:
                video = self.videos[int(rng.integers(len(self.videos)))]
                frames, masks, scale = video.frames, video.masks, self.scale_range
                where = video.name
            else:
                video_seed = int(rng.integers(2**31))
                num_objects = int(rng.integers(1, self.max_objects + 2))
                # Long enough that the largest skip fits (a plan's length costs nothing), and
                # crop-sized: its camera already pans and zooms, and pixels cost time.
                length = max(self.video_length, (self.num_frames - 1) * (self.max_skip + 1) + 1)
                plan = plan_video(
                    video_seed,
                    length,
                    self.crop,
                    num_objects,
                    self.split,
                    recolour_prob=self.recolour_prob,
                    lookalike_prob=self.lookalike_prob,
                )
                rendered = RenderedVideo(plan)
                frames, masks, scale = rendered.frames, rendered.masks, None
                where = f"synthetic video {video_seed}"
            try:
                return sample_video_clip(
                    frames,
                    masks,
                    rng,
                    self.num_frames,
                    self.max_skip,
                    self.crop,
                    self.max_objects,
                    scale_range=scale,
                )
            except InputError as err:
                logger.debug("%s unusable: %s", where, err)
        raise InputError("ClipDataset", f"{_RETRIES} videos in a row gave no usable clip")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        stage_tag = 0 if self.stage == "static" else 1
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index, stage_tag]))
        if self.photo_prob > 0.0 and (
            np.random.default_rng(np.random.SeedSequence([self.seed, index, _PHOTO_TAG])).random()
            < self.photo_prob
        ):
            frames, masks = self._photo(rng)
        elif self.stage == "static":
            frames, masks = self._static(rng)
        else:
            frames, masks = self._video(rng)
        if self.sensor_look_prob > 0.0:
            look_rng = np.random.default_rng(
                np.random.SeedSequence([self.seed, index, stage_tag, _LOOK_TAG])
            )
            if look_rng.random() < self.sensor_look_prob:
                frames = sensor_look(frames, look_rng)
        return clip_item(frames, masks)


def clip_item(frames: np.ndarray, masks: np.ndarray) -> dict[str, torch.Tensor | int]:
    """A clip (frames T x H x W x 3 uint8, masks T x H x W with ids 1..k) as one item of a
    :func:`collate_clips` batch: frames T x 3 x H x W float32 in [0, 1], masks int64."""
    return {
        # numpy converts uint8 -> float32 several times faster than torch's .float() here
        "frames": torch.from_numpy(
            np.ascontiguousarray(frames.transpose(0, 3, 1, 2)).astype(np.float32)
            * np.float32(1.0 / 255.0)
        ),
        "masks": torch.from_numpy(masks.astype(np.int64)),
        "num_objects": int(masks[0].max()),
    }


def one_hot_masks(masks: torch.Tensor, max_objects: int) -> torch.Tensor:
    """Label maps ``... x H x W`` (int64, ids 0..max_objects) -> one-hot float32
    ``... x (1 + max_objects) x H x W`` (channel 0 = background)."""
    if masks.numel() and int(masks.max()) > max_objects:
        raise InputError("masks", f"holds id {int(masks.max())} > max_objects={max_objects}")
    hot = torch.nn.functional.one_hot(masks, max_objects + 1)  # ... x H x W x (1 + K)
    return hot.movedim(-1, -3).float()


def collate_clips(
    batch: Sequence[dict[str, torch.Tensor | int]], max_objects: int = 3
) -> dict[str, torch.Tensor]:
    """Stack ``ClipDataset`` items padded to ``max_objects``.

    Returns ``frames`` B x T x 3 x H x W float32, ``masks`` B x T x H x W int64, ``one_hot``
    B x T x (1 + K) x H x W float32, ``valid`` B x (1 + K) bool (channel 0, the background, is
    always valid; object channel k is valid when k <= that clip's object count) and
    ``num_objects`` B int64. Use with ``functools.partial(collate_clips, max_objects=K)``.
    """
    if not batch:
        raise InputError("batch", "is empty")
    frames = torch.stack([item["frames"] for item in batch])  # type: ignore[misc]
    masks = torch.stack([item["masks"] for item in batch])  # type: ignore[misc]
    counts = torch.tensor([int(item["num_objects"]) for item in batch], dtype=torch.int64)
    if int(counts.max()) > max_objects:
        raise InputError(
            "batch", f"a clip has {int(counts.max())} objects > max_objects={max_objects}"
        )
    valid = torch.arange(max_objects + 1)[None, :] <= counts[:, None]
    return {
        "frames": frames,
        "masks": masks,
        "one_hot": one_hot_masks(masks, max_objects),
        "valid": valid,
        "num_objects": counts,
    }
