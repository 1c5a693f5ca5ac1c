"""Smoke test of bench_videos_per_batch at its smallest settings: the JSON contract (the fields
docs/benchmarks.md's table is built from) and what follows from the settings alone, not speeds.
The Ray and GPU paths are not run here (they need a GPU, or a Ray start-up too slow for a unit
test); ``--ray --ray-gpus 1`` tries the Ray path by hand on a CPU-only machine."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_videos_per_batch
from stm_core.assets import default_checkpoint_path


def test_one_run_per_batch_size_with_the_same_rows(tmp_path):
    if default_checkpoint_path() is None:
        pytest.skip("no shipped model in this installation")
    out = tmp_path / "vpb.json"
    argv = ["--batches", "1", "3", "--videos", "3", "--frames", "2", "--size", "64x48"]
    assert bench_videos_per_batch.main([*argv, "--objects", "1", "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    assert (result["videos"], result["frames_per_video"], result["device"]) == (3, 2, "cpu")
    for key in ("load_average_1min", "load_average_1min_start", "cpu_count", "checkpoint_sha256"):
        assert key in result
    runs = result["runs"]
    assert [(r["mode"], r["videos_per_batch"]) for r in runs] == [("local", 1), ("local", 3)]
    for run in runs:
        assert run["frames"] == 6
        assert run["frames_per_second"] == pytest.approx(run["frames"] / run["median_seconds"])
        assert run["rows_equal"] == 1.0  # the same labels, batched or not
    assert runs[0]["speedup_over_1"] == 1.0
