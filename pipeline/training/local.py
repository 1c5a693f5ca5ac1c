"""Training without Ray: one process, checkpoints in ``storage_path/name/checkpoint_NNNNNNN``.

Used for quick tests and where Ray is not wanted; resumes from the newest complete checkpoint
(a checkpoint directory is written under a temporary name and renamed when complete).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from schemas.training import TrainConfig
from stm_core import pick_device

from .worker import MODEL_FILE, Trainer, run_worker


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in run_dir.glob("checkpoint_*") if (p / MODEL_FILE).is_file())
    return done[-1] if done else None


def train_local(config: TrainConfig) -> Trainer:
    run_dir = Path(config.storage_path) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)

    def report(metrics: dict[str, float], checkpoint: Path | None) -> None:
        if checkpoint is None:
            return
        final = run_dir / f"checkpoint_{int(metrics['step']):07d}"
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(checkpoint, partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)

    return run_worker(
        config,
        rank=0,
        world_size=1,
        resume_dir=latest_checkpoint(run_dir),
        report=report,
        device=pick_device("cuda" if config.use_gpu else "cpu"),
    )
