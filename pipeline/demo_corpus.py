"""A small corpus the package generates, so the labeling job runs with no arguments.

Held-out synthetic clips (never used in training) in DAVIS layout, with seed masks on frame 0
and, in one clip, an object that enters later and is seeded on its first frame.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from stm_core.io import write_mask
from stm_core.training.heldout import heldout_videos, save_as_davis

DEMO_SEED_BASE = 7000  # held-out seed stream, apart from the demo clips and the evaluation set
DEMO_CLIPS = 3
DEMO_FRAMES = 24
DEMO_SIZE = (240, 432)


def make_demo_corpus(root: str | Path) -> Path:
    """(Re)create the demo corpus at ``root`` and return it; identical on every call."""
    root = Path(root)
    shutil.rmtree(root, ignore_errors=True)
    videos = heldout_videos(
        DEMO_CLIPS, num_frames=DEMO_FRAMES, size=DEMO_SIZE, seed_base=DEMO_SEED_BASE
    )
    save_as_davis(videos, root)
    annotations = root / "Annotations" / "480p"
    for video in videos:
        masks = annotations / video.name
        for png in sorted(masks.glob("*.png"))[1:]:
            png.unlink()  # seeds only on frame 0 ...
    late = videos[0]
    first_seen = {}
    for t, labels in enumerate(late.masks):
        for obj in np.unique(labels):
            if obj and obj not in np.unique(late.masks[0]):
                first_seen.setdefault(int(obj), t)
    for obj, t in first_seen.items():  # ... except objects that enter later
        write_mask(annotations / late.name / f"{t:05d}.png", (late.masks[t] == obj) * obj)
    return root
