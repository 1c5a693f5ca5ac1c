"""Training data for STM, made on the CPU without downloads (paper's two stages).

- ``textures``: scikit-image photos split by name into train / held-out sets, and seeded
  procedural textures.
- ``synthetic_video``: multi-object videos with exact masks from a seed (``make_video``).
- ``static_clips``: stage 1, 3-frame clips from one image by random affines (``static_clip``).
- ``video_clips``: stage 2, 3-frame clips from a video with a growing frame skip
  (``sample_video_clip``, ``max_skip_schedule``), plus on-disk DAVIS / YouTube-VOS sources.
- ``datasets``: the torch ``ClipDataset`` and ``collate_clips``.
- ``heldout``: held-out evaluation videos and ``save_as_davis``.
"""

from .datasets import ClipDataset, collate_clips, one_hot_masks
from .heldout import evaluation_videos, heldout_videos, save_as_davis
from .static_clips import colour_jitter, keep_objects, procedural_pair, static_clip
from .synthetic_video import (
    SyntheticVideo,
    VideoPlan,
    make_video,
    make_video_stream,
    plan_video,
    render_frame,
)
from .textures import HELDOUT_IMAGES, TRAIN_IMAGES, image_names, random_texture
from .video_clips import (
    FolderVideoSource,
    RenderedVideo,
    max_skip_schedule,
    sample_frame_indices,
    sample_video_clip,
)

__all__ = [
    "HELDOUT_IMAGES",
    "ClipDataset",
    "collate_clips",
    "one_hot_masks",
    "TRAIN_IMAGES",
    "FolderVideoSource",
    "RenderedVideo",
    "SyntheticVideo",
    "VideoPlan",
    "colour_jitter",
    "evaluation_videos",
    "heldout_videos",
    "image_names",
    "keep_objects",
    "make_video",
    "make_video_stream",
    "max_skip_schedule",
    "plan_video",
    "procedural_pair",
    "random_texture",
    "render_frame",
    "sample_frame_indices",
    "sample_video_clip",
    "save_as_davis",
    "static_clip",
]
