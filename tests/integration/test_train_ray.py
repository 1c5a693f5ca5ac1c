"""The training stage on Ray Train (2 CPU workers, gloo) with checkpoints in S3 (moto on loopback).

What must hold: every checkpoint lands in the bucket as a complete directory; fitting again under
the same name continues from the newest one (the loss history carries on, only the missing steps
are trained); a run killed with SIGKILL resumes from the last checkpoint Ray recorded; and the
stored ``model.pt`` loads with ``stm_core.load_model``.

The model is tiny (resnet18, 64 x 64 crops, one clip per worker per step) so a fit takes ~20-40 s
here, most of it Ray starting the worker group.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from ray_train_watch import checkpoint_dirs, ray_latest_checkpoint, wait_for_cpus_free

from schemas.common import StorageOptions
from schemas.training import TrainConfig

CHECKPOINT_FILES = {"model.pt", "trainer.pt", "history.json", "loss_curve.png"}
# Ray Train V2's record of reported checkpoints, read on resume (ray/train/v2/_internal/constants).
KILL_TIMEOUT_S = 150.0


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


CHILD_FIT = textwrap.dedent(
    """
    import sys
    import ray
    from pipeline.training.ray_trainer import fit
    from schemas.training import TrainConfig

    ray.init(address=sys.argv[1])
    with open(sys.argv[2]) as f:
        fit(TrainConfig.model_validate_json(f.read()))
    """
)


def start_child_fit(
    config: TrainConfig, gcs_address: str, workdir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen, Path]:
    """``fit(config)`` in a child Python attached to the test's Ray cluster, so killing it
    kills a real driver (Ray then tears down that driver's trainer). -> (Popen, log path)."""
    settings = config.model_dump(mode="json")
    # model_dump masks secrets; the child takes the (fake) keys from the environment instead.
    settings["storage"] = {"endpoint_url": config.storage.endpoint_url}
    config_file = workdir / "child_config.json"
    config_file.write_text(json.dumps(settings))
    log_path = workdir / "child.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_FIT, gcs_address, str(config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return child, log_path


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


def test_fit_to_s3_resumes_and_survives_kill(
    ray_local, s3_server, s3_prefix, subprocess_env, tmp_path
):
    """One run name, three fits (one test because each fit costs ~30 s here):

    1. ``fit`` for 2 steps: two complete checkpoint directories in the bucket.
    2. ``fit`` for many steps in a child process attached to the same Ray: it resumes at step 2
       and is SIGKILLed as soon as Ray has recorded a later checkpoint.
    3. ``fit`` again in this process: it resumes from the killed run's last recorded checkpoint
       and trains exactly one more step; its ``model.pt`` loads with ``stm_core.load_model``.
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

    # 2. Same name, more steps, in a child process that is killed after its first checkpoint.
    long_run = first.model_copy(update={"steps": 200})
    gcs_address = ray_local.address_info["gcs_address"]
    child, log_path = start_child_fit(long_run, gcs_address, tmp_path, subprocess_env)
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while (latest := ray_latest_checkpoint(fs, run_dir))["metrics"]["step"] <= 2:
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"child fit recorded no new checkpoint (exit code {child.returncode}):\n"
                    + log_path.read_text()[-3000:]
                )
            time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    wait_for_cpus_free()  # nothing writes to the run any more
    latest = ray_latest_checkpoint(fs, run_dir)
    done = int(latest["metrics"]["step"])
    assert 3 <= done < long_run.steps
    killed_history = read_history(fs, f"{run_dir}/{latest['checkpoint_dir_name']}")
    # Resumed, not restarted: the first two losses are the stored ones, bit for bit (a run that
    # started over would have other random weights: torch seeds every process at random).
    assert [s for s, _ in killed_history] == list(range(done))
    assert killed_history[:2] == history_2

    # 3. Fitting again picks up the killed run's last checkpoint and trains one step, so it
    # writes exactly one checkpoint (a restart would write done + 1, keeping the newest 3).
    before = set(checkpoint_dirs(fs, run_dir))
    result = fit(first.model_copy(update={"steps": done + 1}))
    assert result.error is None
    assert result.metrics["step"] == done + 1
    (newest,) = set(checkpoint_dirs(fs, run_dir)) - before
    assert result.checkpoint.path.rstrip("/") == newest
    history = read_history(fs, newest)
    assert [s for s, _ in history] == list(range(done + 1))
    assert history[:done] == killed_history
    assert result.metrics["loss"] == pytest.approx(history[done][1], rel=1e-6)

    local = tmp_path / "model.pt"
    fs.get(f"{newest}/model.pt", str(local))
    model = load_model(local, device="cpu")
    assert model.spec.name == "resnet18"
    assert read_metadata(local)["step"] == done + 1
