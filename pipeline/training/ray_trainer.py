"""The training stage on Ray Train: a ``TorchTrainer`` (Train V2) over 1..N workers.

CPU workers use gloo, GPU workers nccl with one GPU each (Ray Train picks the backend from
``use_gpu``). Checkpoints and metrics go to ``storage_path/name`` (local or S3); fitting again
with the same name resumes from the newest checkpoint there.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs
import ray
import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, RunConfig, ScalingConfig

from schemas.training import TrainConfig

from .worker import run_worker

log = logging.getLogger(__name__)


def _train_loop_per_worker(config_json: dict) -> None:
    config = TrainConfig.model_validate(config_json)
    context = ray.train.get_context()

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = (
            None if checkpoint_dir is None else ray.train.Checkpoint.from_directory(checkpoint_dir)
        )
        ray.train.report(metrics, checkpoint=checkpoint)

    def run(resume_dir: Path | None) -> None:
        run_worker(
            config,
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            resume_dir=resume_dir,
            report=report,
            device=ray.train.torch.get_device(),
            wrap=ray.train.torch.prepare_model,
        )

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run(None)
    else:
        with private_copy(checkpoint) as directory:
            run(directory)


@contextlib.contextmanager
def private_copy(checkpoint: ray.train.Checkpoint) -> Iterator[Path]:
    """The checkpoint as a local directory that no other worker writes to.

    Not ``Checkpoint.as_directory``: with a remote checkpoint it hands every worker on a node
    the same download directory, and a worker that takes the download lock after another has
    finished downloads again over the files the first is already reading. A resumed run then
    failed with "PytorchStreamReader failed reading file" on a checkpoint that was whole in the
    bucket. A local checkpoint is read in place (nothing writes to it).
    """
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    with tempfile.TemporaryDirectory(prefix="stm-resume-") as tmp:
        checkpoint.to_directory(tmp)
        yield Path(tmp)


def fit(config: TrainConfig) -> ray.train.Result:
    """Run (or resume) the training stage described by ``config``; returns Ray's result."""
    from pipeline.storage import pyarrow_filesystem

    filesystem, path = pyarrow_filesystem(config.storage_path, config.storage)
    threads = config.threads_per_worker or 1
    trainer = ray.train.torch.TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=config.model_dump(mode="json", context={"reveal_secrets": True})
        | {"storage": _storage_dump(config)},
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": threads},
        ),
        run_config=RunConfig(
            name=config.name,
            storage_path=path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=3),
        ),
    )
    return trainer.fit()


def _storage_dump(config: TrainConfig) -> dict:
    """Storage options with secrets in clear, for the workers only (never logged or saved)."""
    s = config.storage
    return {
        "endpoint_url": s.endpoint_url,
        "key": s.key.get_secret_value() if s.key else None,
        "secret": s.secret.get_secret_value() if s.secret else None,
        "region": s.region,
        "anon": s.anon,
    }
