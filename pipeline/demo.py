"""The propagation demo: label a few generated clips end to end and score them.

It needs nothing but the installed package: held-out synthetic clips (never used in training) are
generated, written in DAVIS layout, seeded with their frame-0 masks, propagated with the given (or
shipped) model, and scored with J&F against their exact masks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from stm_core.model.network import STM
from stm_core.training.heldout import heldout_videos, save_as_davis

from .folder_tasks import Progress, evaluate_folders, propagate_folder

DEMO_SEED_BASE = 9000  # held-out seed stream; the README's evaluation set starts elsewhere


def run_demo(
    model: STM,
    out_dir: str | Path,
    clips: int = 3,
    num_frames: int = 25,
    size: tuple[int, int] = (240, 432),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``clips/`` (frames + ground truth), ``seeds/`` (frame 0 only) and ``pred/`` (one
    palette PNG per frame) under ``out_dir``; return the J&F summary."""
    out = Path(out_dir)
    for sub in ("clips", "seeds", "pred"):
        shutil.rmtree(out / sub, ignore_errors=True)
    videos = heldout_videos(clips, num_frames=num_frames, size=size, seed_base=DEMO_SEED_BASE)
    save_as_davis(videos, out / "clips")
    frames_root = out / "clips" / "JPEGImages" / "480p"
    gt_root = out / "clips" / "Annotations" / "480p"
    for video in videos:
        seeds = out / "seeds" / video.name
        seeds.mkdir(parents=True)
        shutil.copy(gt_root / video.name / "00000.png", seeds / "00000.png")
        propagate_folder(
            model, frames_root / video.name, seeds, out / "pred" / video.name, progress=progress
        )
    return evaluate_folders(out / "pred", gt_root)
