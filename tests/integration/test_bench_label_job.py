"""Smoke test of ``benchmarks/bench_label_job.py --quick`` against the session's moto server.

The benchmark runs in a child process (joining the session's Ray with ``--address``, as the
other Ray tests use it, rather than starting a local cluster of its own: 10-15 s here) and
writes its JSON
to a temporary file; the test checks that the numbers in it are consistent with each other and
with the corpus the script was asked to build: every frame labeled once by the bare loop and by
both jobs, one mask row per frame and object, no errors, the shard and plan counts that the
corpus size implies, and the derived ratios recomputable from the raw timings.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240  # ~60 s on an idle machine; Ray start-up alone takes 15 s under load


@pytest.fixture(scope="module")
def quick_result(s3_server, aws_test_env, ray_local, tmp_path_factory) -> tuple[dict, str]:
    """The JSON and stdout of one ``--quick`` run (module-scoped: the run takes ~1 minute)."""
    out = tmp_path_factory.mktemp("bench") / "label_job.json"
    env = dict(os.environ)  # aws_test_env has put the fake credentials in it
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_label_job",
        "--quick",
        "--endpoint",
        s3_server.endpoint_url,
        "--bucket",
        s3_server.bucket,
        "--address",
        ray_local.address_info["gcs_address"],
        "--out",
        str(out),
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_every_frame_is_labeled_once_by_each_path(quick_result) -> None:
    result, _ = quick_result
    settings = result["settings"]
    frames = settings["videos"] * settings["frames_per_video"]
    assert [p["frames"] for p in result["bare_passes"]] == [frames]
    assert [j["workers"] for j in result["jobs"]] == [1, 2]
    for job in result["jobs"]:
        assert job["errors"] == 0
        assert job["videos"] == settings["videos"]
        assert job["frames"] == frames
        assert job["masks"] == frames * settings["objects"]
        assert job["shards"] == math.ceil(settings["videos"] / settings["videos_per_shard"])


def test_timings_are_consistent(quick_result, ray_local) -> None:
    result, _ = quick_result
    for job in result["jobs"]:
        assert 0 < job["labeling_seconds"] < job["total_seconds"]
        assert job["labeling_fps"] == pytest.approx(job["frames"] / job["labeling_seconds"])
        assert job["total_fps"] == pytest.approx(job["frames"] / job["total_seconds"])
    bare = result["bare_passes"][0]
    assert bare["seconds"] == pytest.approx(sum(v["seconds"] for v in bare["per_video"]))
    assert result["bare_fps"] == pytest.approx(bare["frames"] / bare["seconds"])
    one, two = result["jobs"]
    assert result["overhead_fraction"] == pytest.approx(
        1 - one["labeling_fps"] / result["bare_fps"]
    )
    assert result["overhead_ok"] == (result["overhead_fraction"] < result["overhead_target"])
    assert result["speedup_2_vs_1_workers_labeling"] == pytest.approx(
        two["labeling_fps"] / one["labeling_fps"]
    )
    assert result["ray_start_seconds"] > 0
    assert result["settings"]["ray_address"] == ray_local.address_info["gcs_address"]
    assert result["settings"]["ray_cpus"] == int(ray.cluster_resources()["CPU"])


def test_discovery_and_plan_of_the_large_corpus(quick_result) -> None:
    result, _ = quick_result
    d = result["discovery"]
    assert d["videos"] == 60  # --quick's size of the discovery corpus
    assert d["objects_uploaded"] == d["videos"] + 1  # the mp4s and the seed table
    assert d["tasks"] == d["videos"]
    assert d["discovery_errors"] == 0
    assert d["shards"] == d["saved_shards"] == math.ceil(d["videos"] / d["videos_per_shard"])
    assert d["discover_and_plan_seconds"] == pytest.approx(
        d["discover_seconds"] + d["load_or_create_plan_seconds"]
    )


def test_prints_a_table(quick_result) -> None:
    _, stdout = quick_result
    assert "| measure" in stdout
    assert "overhead, labeling phase" in stdout
    assert "discover() s" in stdout
