"""The labeling job as a user runs it: ``ray start --head``, then ``ray job submit --working-dir
<repo> -- python jobs/label_corpus.py --config job.yaml``, with the corpus, the checkpoint and the
output on S3 (a moto server on loopback, started here).

What this adds over tests/integration: the entrypoint script runs in a job driver that Ray
starts from an uploaded copy of the repository, joins the cluster through ``RAY_ADDRESS``, and
reports success through its exit code; the tables it leaves on S3 are complete.

The cluster runs with ``RAY_AUTH_MODE=disabled`` for both ``ray start`` and the job client (a
token-auth cluster rejects a client that is not told to use the token), in its own temp dir
(so ``ray_current_cluster`` of other clusters on this machine is left alone), and with
``--block``: stopping it is a SIGTERM to the one process this test started, which takes down
its own Ray processes only. ``ray stop`` is not used: it stops every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from integration.corpus_factory import (
    CorpusBuilder,
    etags,
    make_checkpoint,
    read_output,
    synthetic_video,
    upload_tree,
)

from pipeline import ledger
from schemas.common import StorageOptions

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")  # the venv's CLI, next to its python
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_TIMEOUT_S = 180.0
JOB_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0
SUBMIT_ATTEMPTS = 3
NO_AGENT = "No available agent to submit job"
RUN_ID = "e2e-1"
# video id -> (frames, seeded objects on frame 0)
VIDEOS = {"walk": (5, (1, 2)), "clips/run.mp4": (5, (1,))}


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def ray_env() -> dict[str, str]:
    """The environment of every Ray CLI call: no auth, the venv first on PATH (the job's
    ``python``), fake AWS credentials, and no pointer to any other cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(FAKE_AWS)
    env["RAY_AUTH_MODE"] = "disabled"
    env["PATH"] = os.pathsep.join([str(RAY.parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class Cluster:
    address: str  # the dashboard / job API, http://127.0.0.1:<port>
    log: Path  # output of `ray start`


def _wait_until_ok(url: str, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ray start exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"{what} at {url} did not come up:\n{log.read_text()}")


def _wait_for_cluster(address: str, agent_port: int, process: subprocess.Popen, log: Path) -> None:
    """The dashboard answering is not enough to take a job: the head hands each submission to the
    head node's dashboard agent and gives up after 10 s ("No available agent to submit job"),
    and on a loaded machine the agent comes up well after the dashboard. The agent registers
    itself right after its HTTP server starts, so its health endpoint answering means a
    submission will find it."""
    _wait_until_ok(f"{address}/api/version", "the dashboard", process, log)
    _wait_until_ok(
        f"http://127.0.0.1:{agent_port}/api/healthz", "the dashboard agent", process, log
    )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to ``ray start --block`` (it then stops the Ray processes it started); whatever
    is left of its process tree after the grace period is killed, by pid."""
    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(tree, timeout=15)
    for leftover in alive:
        leftover.kill()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory) -> Iterator[Cluster]:
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics, node, objects = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="raye2e", dir="/tmp")  # short: socket paths are limited
    log = tmp_path_factory.mktemp("ray") / "ray-start.log"
    command = [
        str(RAY),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node}",
        f"--object-manager-port={objects}",
        "--num-cpus=2",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    address = f"http://127.0.0.1:{dashboard}"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=ray_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_cluster(address, agent, process, log)
        yield Cluster(address, log)
    finally:
        _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class S3:
    endpoint_url: str
    fs: object  # s3fs.S3FileSystem, no caches
    storage: StorageOptions


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        keys = {"key": FAKE_AWS["AWS_ACCESS_KEY_ID"], "secret": FAKE_AWS["AWS_SECRET_ACCESS_KEY"]}
        fs = s3fs.S3FileSystem(
            **keys,
            client_kwargs={"endpoint_url": endpoint},
            skip_instance_cache=True,
            use_listings_cache=False,
        )
        fs.mkdir("e2e")
        yield S3(endpoint, fs, StorageOptions(endpoint_url=endpoint, **keys))
    finally:
        server.stop()


def plain(text: str) -> str:
    """``text`` without the CLI's ANSI colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def ray_cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAY), *args],
        env=ray_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit(cluster: Cluster, job_yaml: Path) -> tuple[str, str]:
    """``ray job submit`` (blocking) of the labeling job with the repository as working dir;
    returns the submission id and the client's output (the driver's log, then the outcome).

    A refusal because the head found no agent ("please try again later": nothing was submitted)
    is retried a few times, as its message asks; any other outcome is returned as it is."""
    for attempt in range(SUBMIT_ATTEMPTS):
        submission = f"label-e2e-{uuid.uuid4().hex[:8]}"
        done = ray_cli(
            "job",
            "submit",
            "--address",
            cluster.address,
            "--working-dir",
            str(REPO),
            "--submission-id",
            submission,
            "--",
            "python",
            "jobs/label_corpus.py",
            "--config",
            str(job_yaml),
            timeout=JOB_TIMEOUT_S,
        )
        text = plain(done.stdout + done.stderr)
        if NO_AGENT not in text or attempt == SUBMIT_ATTEMPTS - 1:
            break
        time.sleep(5.0)
    failed = f"Job '{submission}' failed" in text
    assert (done.returncode != 0) == failed, text[-6000:]  # the exit code tells the outcome
    return submission, text


def job_status(cluster: Cluster, submission: str) -> str:
    """``succeeded`` / ``failed`` / ... as ``ray job status`` reports it."""
    done = ray_cli("job", "status", "--address", cluster.address, submission, timeout=60)
    match = re.search(rf"Job '{re.escape(submission)}' (\w+)", plain(done.stdout + done.stderr))
    assert match, done.stdout + done.stderr
    return match.group(1)


def test_label_job_via_ray_job_submit(ray_cluster: Cluster, s3: S3, tmp_path: Path) -> None:
    builder = CorpusBuilder(tmp_path / "corpus-src")
    for n, (video_id, (frames, objects)) in enumerate(VIDEOS.items()):
        builder.add_video(
            video_id, synthetic_video(60 + n, frames, objects=len(objects)), {0: objects}
        )
    builder.write_seed_table()
    make_checkpoint(builder.root / "model" / "random-resnet18.pt", seed=3)
    base = upload_tree(s3.fs, builder.root, "s3://e2e/label")
    output = f"{base}/out"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "corpus_uri": f"{base}/corpus",
                "seeds_uri": f"{base}/seeds.parquet",
                "output_uri": output,
                "run_id": RUN_ID,
                "checkpoint_uri": f"{base}/model/random-resnet18.pt",
                "cpu_threads_per_worker": 1,
                "videos_per_shard": 1,
                "storage": {"endpoint_url": s3.endpoint_url, "key": "testing", "secret": "testing"},
            }
        )
    )

    submission, text = submit(ray_cluster, job)
    assert f"Job '{submission}' succeeded" in text, text[-6000:]
    assert job_status(ray_cluster, submission) == "succeeded"

    masks = read_output(output, s3.storage, "masks")
    keys = list(
        zip(
            masks["video_id"].to_pylist(),
            masks["frame_index"].to_pylist(),
            masks["object_id"].to_pylist(),
            strict=True,
        )
    )
    expected = [
        (video, t, k)
        for video, (frames, objects) in sorted(VIDEOS.items())
        for t in range(frames)
        for k in objects
    ]
    assert keys == expected
    assert masks.filter(masks["is_seed"]).num_rows == sum(len(o) for _, o in VIDEOS.values())
    assert read_output(output, s3.storage, "errors").num_rows == 0
    assert ledger.read_success(output, RUN_ID, s3.storage).shards == len(VIDEOS)
    layout = ledger.RunLayout(output, RUN_ID)
    record = json.loads(s3.fs.cat_file(layout.record_uri.removeprefix("s3://")))
    assert record["status"] == "succeeded" and record["masks"] == len(expected)
    assert sorted(etags(s3.fs, layout.masks_dir)) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert f"run {RUN_ID} succeeded in " in text  # the summary the driver prints
    assert "progress: " in text  # not a terminal under ray job submit: plain progress lines


def test_a_job_with_an_unreadable_checkpoint_fails(
    ray_cluster: Cluster, s3: S3, tmp_path: Path
) -> None:
    """The driver exits with 2 before labeling; Ray reports the job as failed, and the message
    naming the checkpoint is in the job's log."""
    checkpoint = "s3://e2e/nowhere/model.pt"
    output = "s3://e2e/failed-out"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "corpus_uri": "s3://e2e/label/corpus",
                "output_uri": output,
                "run_id": RUN_ID,
                "checkpoint_uri": checkpoint,
                "storage": {"endpoint_url": s3.endpoint_url, "key": "testing", "secret": "testing"},
            }
        )
    )
    submission, text = submit(ray_cluster, job)
    assert f"Job '{submission}' failed" in text
    assert f"{checkpoint}: cannot read the checkpoint" in text
    assert job_status(ray_cluster, submission) == "failed"
    assert etags(s3.fs, output) == {}
