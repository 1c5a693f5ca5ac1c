"""The training stage on Ray Train (2 CPU workers, gloo) with checkpoints in S3 (moto on loopback).

What must hold: every checkpoint lands in the bucket as a complete directory; fitting again under
the same name continues from the newest one (the loss history carries on, only the missing steps
are trained); and the stored ``model.pt`` loads with ``stm_core.load_model``. A run killed with
SIGKILL resumes from the last checkpoint Ray recorded: that is tested through the data engine's
nightly run, which trains with the same ``fit`` (``test_nightly.py``).

The model is tiny (resnet18, 64 x 64 crops, one clip per worker per step) so a fit takes ~20-40 s
here, most of it Ray starting the worker group.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from ray_train_watch import checkpoint_dirs, ray_latest_checkpoint

from schemas.common import StorageOptions
from schemas.training import TrainConfig

CHECKPOINT_FILES = {"model.pt", "trainer.pt", "history.json", "loss_curve.png"}


def tiny_config(storage_path: str, storage: StorageOptions, name: str, steps: int) -> TrainConfig:
    return TrainConfig(
        name=name,
        stage="static",
        trunk="resnet18",
        crop=(64, 64),
        max_objects=2,
        steps=steps,
        batch_size=1,
        lr=1e-3,
        warmup_steps=0,
        checkpoint_every=1,
        workers=2,
        threads_per_worker=1,
        storage_path=storage_path,
        storage=storage,
        data={"seed": 0},
    )


def read_history(fs: Any, checkpoint_dir: str) -> list[list[float]]:
    """``history.json`` of a checkpoint: ``[[step, loss], ...]``."""
    return json.loads(fs.cat_file(f"{checkpoint_dir}/history.json"))


def run_dir_of(config: TrainConfig) -> str:
    return config.storage_path.removeprefix("s3://") + "/" + config.name


def test_storage_paths_for_ray_train(tmp_path, monkeypatch):
    """Ray Train takes a path without scheme plus a pyarrow filesystem; a local path must be
    absolute because Ray's workers change their working directory."""
    import pyarrow.fs as pafs

    from pipeline.storage import pyarrow_filesystem
    from schemas.common import StorageOptions

    monkeypatch.chdir(tmp_path)
    fs, path = pyarrow_filesystem("runs/train", StorageOptions())
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == str((tmp_path / "runs" / "train").resolve())
    options = StorageOptions(endpoint_url="http://127.0.0.1:9000", key="k", secret="s")
    fs, path = pyarrow_filesystem("s3://bkt/ckpt/", options)
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == "bkt/ckpt"
    settings = fs.__reduce__()[1][0]  # what Ray pickles to its controller and workers
    assert (settings["endpoint_override"], settings["scheme"]) == ("127.0.0.1:9000", "http")
    assert (settings["access_key"], settings["secret_key"]) == ("k", "s")


def test_fit_to_s3_writes_whole_checkpoints_and_resumes_by_name(
    ray_local, s3_server, s3_prefix, tmp_path
):
    """One run name, two fits (one test because each fit costs ~30 s here):

    1. ``fit`` for 2 steps: two complete checkpoint directories in the bucket.
    2. ``fit`` again under the same name for 4 steps with a time limit that runs out after its
       first step: it resumes from the newest checkpoint, trains exactly one more step on both
       ranks and stops with a checkpoint; its ``model.pt`` loads with ``stm_core.load_model``.

    A fit killed with SIGKILL and resumed from the last checkpoint Ray recorded is tested
    through the data engine, whose nightly run calls this ``fit``
    (``test_nightly.py::test_a_night_killed_in_training_and_resubmitted_makes_one_candidate``).
    """
    from pipeline.training.ray_trainer import fit
    from stm_core import load_model
    from stm_core.checkpoint import read_metadata

    fs = s3_server.fs
    first = tiny_config(f"{s3_prefix}/ckpt", s3_server.storage, "run", steps=2)
    run_dir = run_dir_of(first)

    # 1. A clean fit writes a complete checkpoint directory per step.
    result = fit(first)
    assert result.error is None
    assert result.metrics["step"] == 2
    dirs = checkpoint_dirs(fs, run_dir)
    assert len(dirs) == 2, dirs
    for d in dirs:
        names = {p.rsplit("/", 1)[-1] for p in fs.ls(d, detail=False)}
        assert names >= CHECKPOINT_FILES, (d, names)
    assert result.checkpoint.path.rstrip("/") == dirs[-1]
    history_1, history_2 = (read_history(fs, d) for d in dirs)
    assert [s for s, _ in history_2] == [0, 1]
    assert history_2[:1] == history_1
    assert ray_latest_checkpoint(fs, run_dir)["metrics"]["step"] == 2

    # 2. Fitting again under the same name picks up the newest checkpoint and trains one step,
    # so it writes exactly one checkpoint (a restart would write three). Resumed, not
    # restarted: the first two losses are the stored ones, bit for bit (a run that started over
    # would have other random weights: torch seeds every process at random).
    # A time limit that has run out after one step stops both ranks there (a vote: a rank that
    # stopped alone would leave the other waiting in the all-reduce), with a checkpoint.
    result = fit(first.model_copy(update={"steps": 4, "time_limit_minutes": 1e-6}))
    assert result.error is None
    assert result.metrics["step"] == 3
    (newest,) = set(checkpoint_dirs(fs, run_dir)) - set(dirs)
    assert result.checkpoint.path.rstrip("/") == newest
    history = read_history(fs, newest)
    assert [s for s, _ in history] == [0, 1, 2]
    assert history[:2] == history_2
    assert result.metrics["loss"] == pytest.approx(history[2][1], rel=1e-6)

    local = tmp_path / "model.pt"
    fs.get(f"{newest}/model.pt", str(local))
    model = load_model(local, device="cpu")
    assert model.spec.name == "resnet18"
    assert read_metadata(local)["step"] == 3
