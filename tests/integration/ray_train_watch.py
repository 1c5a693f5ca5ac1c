"""Watching a Ray Train run from a test: its checkpoint folders, the checkpoint Ray would resume
from, and waiting for a killed run's workers to go away. Shared by the training and data-engine
integration tests."""

from __future__ import annotations

import json
import time
from typing import Any

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def checkpoint_dirs(fs: Any, run_dir: str) -> list[str]:
    """Ray's checkpoint directories under ``run_dir`` (bucket/key, no scheme), oldest first:
    their names are ``checkpoint_<timestamp>``, which sorts by time."""
    fs.invalidate_cache(run_dir)
    if not fs.exists(run_dir):
        return []
    return sorted(
        entry["name"]
        for entry in fs.ls(run_dir, detail=True)
        if entry["type"] == "directory"
        and entry["name"].rsplit("/", 1)[-1].startswith("checkpoint_")
    )


def ray_latest_checkpoint(fs: Any, run_dir: str) -> dict | None:
    """The newest checkpoint in Ray's snapshot (what a resumed run gets from
    ``ray.train.get_checkpoint()``): ``{"checkpoint_dir_name": ..., "metrics": {...}}``."""
    path = f"{run_dir}/{RAY_SNAPSHOT}"
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path)).get("latest_checkpoint_result")


def wait_for_cpus_free(timeout_s: float = 60.0) -> None:
    """Block until no Ray task or actor holds a CPU (a killed driver's workers are gone)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the killed run's Ray workers never went away"
        time.sleep(0.5)
