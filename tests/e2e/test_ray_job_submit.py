"""The labeling job as a user runs it: the README's cluster commands (the fenced block after the
``<!-- ray-cluster:`` marker), run as written, with the corpus, the checkpoint and the output on
S3 (a moto server on loopback, started here).

The block is read from the README each time, so the README cannot drift from what is tested:
``export`` lines set the environment of every later command, ``ray get-auth-token ...`` runs in
bash as written, ``ray start --head ...`` starts the cluster and ``ray job submit ...`` (the last
line) submits the job. A line of any other kind fails the test instead of being run (``ray
stop`` above all: it stops every Ray process on the machine). What the test changes, and only
that: its own ``HOME`` (so the token the README's line creates is the test's, not the user's
``~/.ray/auth_token``); options added to ``ray start --head`` that keep it apart from other Ray
on this machine (free ports, its own temp dir, 2 CPUs, ``--block`` so that stopping it is a
SIGTERM to the one process started here); ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so the cluster
listens on 127.0.0.1 only; and in the submit line the README's placeholders: the dashboard port
8265 and the config ``job.yaml``.

What this adds over tests/integration: the entrypoint script runs in a job driver that Ray
starts from an uploaded copy of the repository, joins the cluster through ``RAY_ADDRESS`` with
the cluster's token, and reports success through its exit code; the tables it leaves on S3 are
complete; and a client without the token is refused, as the README says.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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
from pipeline.ray_connect import SINGLE_MACHINE_ENV
from schemas.common import StorageOptions

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MARKER = "<!-- ray-cluster:"
DASHBOARD_PORT = "8265"  # placeholders of the README's submit line
JOB_CONFIG = "job.yaml"
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


def readme_block() -> list[str]:
    """The command lines of the README's fenced block after the marker (no blank lines)."""
    text = README.read_text()
    assert MARKER in text, f"README.md has no {MARKER} block"
    after = text.split(MARKER, 1)[1]
    block = after.split("```bash\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


@dataclass(frozen=True)
class ReadmeCommands:
    exports: dict[str, str]  # from ``export NAME=VALUE`` lines
    setup: list[str]  # lines run by bash as written, before the cluster starts
    start: list[str]  # ``ray start --head ...``, split
    submit: list[str]  # ``ray job submit ...``, split, placeholders still in


def parse_readme_commands(lines: list[str]) -> ReadmeCommands:
    exports: dict[str, str] = {}
    setup: list[str] = []
    start: list[str] | None = None
    submit: list[str] | None = None
    for line in lines:
        words = shlex.split(line, comments=True)
        assert submit is None, f"README: nothing may follow the submit line: {line}"
        if not words:
            continue
        if words[0] == "export" and start is None:
            exports.update(word.split("=", 1) for word in words[1:])
        elif words[:2] == ["ray", "get-auth-token"] and start is None:
            setup.append(line)
        elif words[:3] == ["ray", "start", "--head"] and start is None:
            start = words
        elif words[:3] == ["ray", "job", "submit"] and start is not None:
            submit = words
        else:
            pytest.fail(f"README line the e2e test does not know how to run: {line}")
    assert start and submit, "README: the block needs a `ray start --head` and a submit line"
    return ReadmeCommands(exports, setup, start, submit)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def base_env(home: Path) -> dict[str, str]:
    """The environment the README's commands start from: a private ``HOME``, no Ray setting
    and no pointer to any other cluster, the venv first on PATH (``ray`` and the job's
    ``python``), fake AWS credentials, and Ray's single-machine mode (loopback only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(FAKE_AWS)
    env["HOME"] = str(home)
    env[SINGLE_MACHINE_ENV] = "0"
    env["PATH"] = os.pathsep.join([str(RAY.parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class Cluster:
    address: str  # the dashboard / job API, http://127.0.0.1:<port>
    port: int  # its port
    log: Path  # output of `ray start`
    env: dict[str, str]  # of every command after the README's exports
    submit: list[str]  # the README's submit line, split


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
    submission will find it. (Health endpoints answer without a token.)"""
    _wait_until_ok(f"{address}/api/gcs_healthz", "the dashboard", process, log)
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
    """The README's block up to ``ray start --head``; the submit line is the tests'."""
    commands = parse_readme_commands(readme_block())
    home = tmp_path_factory.mktemp("home")
    env = {**base_env(home), **commands.exports}
    for line in commands.setup:
        done = subprocess.run(
            ["bash", "-c", line], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{line}: {done.stderr[-3000:]}"  # stdout: the token
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics, node, objects = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="raye2e", dir="/tmp")  # short: socket paths are limited
    log = tmp_path_factory.mktemp("ray") / "ray-start.log"
    command = [
        str(RAY),
        *commands.start[1:],
        "--block",
        f"--port={gcs}",
        "--include-dashboard=true",
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
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_cluster(address, agent, process, log)
        yield Cluster(address, dashboard, log, env, commands.submit)
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


def run(cluster: Cluster, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def submit_line(cluster: Cluster, job_yaml: Path) -> list[str]:
    """The README's submit line with its placeholders filled in: each is there exactly once."""
    words = [str(RAY), *cluster.submit[1:]]
    ports = [i for i, word in enumerate(words) if f":{DASHBOARD_PORT}" in word]
    configs = [i for i, word in enumerate(words) if word == JOB_CONFIG]
    assert len(ports) == 1 and len(configs) == 1, f"README submit line: {cluster.submit}"
    words[ports[0]] = words[ports[0]].replace(f":{DASHBOARD_PORT}", f":{cluster.port}")
    words[configs[0]] = str(job_yaml)
    return words


def submit(cluster: Cluster, job_yaml: Path) -> tuple[str, str]:
    """The README's ``ray job submit`` (blocking) of the labeling job; returns the submission id
    (from the client's output) and that output (the driver's log, then the outcome).

    A refusal because the head found no agent ("please try again later": nothing was submitted)
    is retried a few times, as its message asks; any other outcome is returned as it is."""
    command = submit_line(cluster, job_yaml)
    for attempt in range(SUBMIT_ATTEMPTS):
        done = run(cluster, command, timeout=JOB_TIMEOUT_S)
        text = plain(done.stdout + done.stderr)
        if NO_AGENT not in text or attempt == SUBMIT_ATTEMPTS - 1:
            break
        time.sleep(5.0)
    match = re.search(r"Job '(\w+)' submitted successfully", text)
    assert match, text[-6000:]
    submission = match.group(1)
    failed = f"Job '{submission}' failed" in text
    assert (done.returncode != 0) == failed, text[-6000:]  # the exit code tells the outcome
    return submission, text


def job_status(cluster: Cluster, submission: str) -> str:
    """``succeeded`` / ``failed`` / ... as ``ray job status`` reports it."""
    command = [str(RAY), "job", "status", "--address", cluster.address, submission]
    done = run(cluster, command, timeout=60)
    match = re.search(rf"Job '{re.escape(submission)}' (\w+)", plain(done.stdout + done.stderr))
    assert match, done.stdout + done.stderr
    return match.group(1)


def test_a_readme_line_of_another_kind_fails_instead_of_running() -> None:
    """The README's block as it is parses; with a ``ray stop`` in it, the test fails before
    anything runs."""
    lines = readme_block()
    parse_readme_commands(lines)
    with pytest.raises(pytest.fail.Exception, match="does not know how to run: ray stop"):
        parse_readme_commands([*lines[:-1], "ray stop", lines[-1]])


def test_a_client_without_the_token_is_refused(ray_cluster: Cluster) -> None:
    """What the README warns about: the job API answers 401 "Missing authentication token"."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ray_cluster.address}/api/version", timeout=30)
    assert refused.value.code == 401
    assert "Missing authentication token" in refused.value.read().decode()


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
