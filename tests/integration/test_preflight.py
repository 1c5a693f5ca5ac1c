"""Preflight (issue 19): a mistake about a store ends before any work, and before Ray starts, in
one line naming the URI, what was tried and the likely cause, with exit code 2 and nothing
written.

Each test runs the real command in this process (``jobs/label_corpus.py``, ``jobs/nightly.py``,
``stm-label train|export|preview|correct|history``) against S3 on loopback (moto) or a local
path. Wrong credentials are moto with its IAM checks on (``INITIAL_NO_AUTH_ACTION_COUNT = 0``:
the fake ``testing`` key is then unknown); a wrong endpoint is a loopback port nothing listens
on. "No Ray": ``pipeline.ray_connect.connect`` fails the test if called, and
``ray.is_initialized()`` is what it was before.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import moto.settings
import pytest
import ray
import yaml
from corpus_factory import CorpusBuilder, etags, make_checkpoint, synthetic_video, upload_tree

from jobs import cli, label_corpus, nightly
from pipeline import ray_connect

SECONDS = 20.0  # every failing command answers within this (a dead port: about 2 s)


@pytest.fixture()
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    was_initialized = ray.is_initialized()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command joined or started Ray before its preflight failed")

    monkeypatch.setattr(ray_connect, "connect", refuse)
    yield
    assert ray.is_initialized() is was_initialized


@pytest.fixture(scope="module")
def corpus(s3_server, tmp_path_factory) -> str:
    """One 3-frame video and its seed table on S3; returns the base URI (``corpus``,
    ``seeds.parquet`` under it)."""
    builder = CorpusBuilder(tmp_path_factory.mktemp("preflight"))
    builder.add_video("v1", synthetic_video(1, 3), {0: (1, 2)})
    builder.write_seed_table()
    return upload_tree(s3_server.fs, builder.root, s3_server.uri("preflight-corpus"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "r18.pt")


def dead_endpoint() -> str:
    """An endpoint on a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def write_yaml(path: Path, settings: dict) -> str:
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def one_line(err: str, prefix: str) -> str:
    """The single line a failing command printed on stderr (and nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture()
def auth_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto checks credentials while the test runs: the fake ``testing`` key is refused."""
    with monkeypatch.context() as patch:
        patch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        yield


# --- the labeling job ---------------------------------------------------------------------


def label_settings(s3_server, corpus: str, output: str, checkpoint: Path, **change) -> dict:
    settings = {
        "corpus_uri": f"{corpus}/corpus",
        "seeds_uri": f"{corpus}/seeds.parquet",
        "output_uri": output,
        "run_id": "preflight",
        "checkpoint_uri": str(checkpoint),
        "storage": {"endpoint_url": s3_server.endpoint_url},
    }
    for key, value in change.items():
        if key == "endpoint_url":
            settings["storage"] = {"endpoint_url": value}
        else:
            settings[key] = value
    return settings


NO_BUCKET = "s3://no-such-bucket"
LABEL_MISTAKES = {
    # name: (change to the settings, the expected line after "label_corpus: ")
    "wrong endpoint": (
        {"endpoint_url": "DEAD"},
        "corpus_uri {corpus_uri}: cannot list it: endpoint DEAD unreachable (connection refused)",
    ),
    "missing bucket": (
        {"corpus_uri": f"{NO_BUCKET}/corpus"},
        "corpus_uri {corpus_uri}: cannot list it: no such bucket 'no-such-bucket'",
    ),
    "missing corpus": (
        {"corpus_uri": "s3://stm-test/preflight-nothing-here"},
        "corpus_uri {corpus_uri}: cannot list it: does not exist",
    ),
    "missing seeds": (
        {"seeds_uri": "s3://stm-test/preflight-corpus/no-seeds.parquet"},
        "seeds_uri {seeds_uri}: cannot read it: does not exist",
    ),
    "output in a missing bucket": (
        {"output_uri": f"{NO_BUCKET}/out"},
        "output_uri {output_uri}: cannot write to it (tried to create and delete "
        f"{NO_BUCKET}/out/.stm-label-probe-",
    ),
    "missing checkpoint": (
        {"checkpoint_uri": "s3://stm-test/preflight-models/missing.pt"},
        "checkpoint_uri {checkpoint_uri}: cannot read the checkpoint: does not exist",
    ),
}


@pytest.mark.parametrize("mistake", list(LABEL_MISTAKES))
def test_label_job_mistakes_are_one_line_before_ray(
    s3_server, corpus, checkpoint, tmp_path, capsys, no_ray, mistake
) -> None:
    change, expected = LABEL_MISTAKES[mistake]
    dead = dead_endpoint()
    change = {k: v.replace("DEAD", dead) for k, v in change.items()}
    output = s3_server.uri(f"preflight-out-{tmp_path.name}")
    settings = label_settings(s3_server, corpus, output, checkpoint, **change)
    started = time.monotonic()
    code = label_corpus.main(["--config", write_yaml(tmp_path / "job.yaml", settings)])
    elapsed = time.monotonic() - started
    line = one_line(capsys.readouterr().err, "label_corpus: ")
    assert code == 2
    assert expected.replace("DEAD", dead).format(**settings) in line
    assert elapsed < SECONDS
    assert etags(s3_server.fs, output) == {}  # nothing written


def test_label_job_with_refused_credentials(
    s3_server, corpus, checkpoint, tmp_path, capsys, no_ray, auth_on
) -> None:
    output = s3_server.uri(f"preflight-out-{tmp_path.name}")
    settings = label_settings(s3_server, corpus, output, checkpoint)
    code = label_corpus.main(["--config", write_yaml(tmp_path / "job.yaml", settings)])
    line = one_line(capsys.readouterr().err, "label_corpus: ")
    assert code == 2
    assert f"corpus_uri {corpus}/corpus: cannot list it: access denied" in line
    assert "AWS_ACCESS_KEY_ID" in line and "testing" not in line  # the hint, never the key


def test_a_refused_write_probe_names_the_probe_and_writes_nothing(
    s3_server, tmp_path, monkeypatch
) -> None:
    from pipeline.preflight import PreflightError, check_writable

    output = s3_server.uri(f"preflight-out-{tmp_path.name}")
    with monkeypatch.context() as patch, pytest.raises(PreflightError) as caught:
        patch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        check_writable("output_uri", output, s3_server.storage)
    message = str(caught.value)
    assert message.startswith(f"output_uri {output}: cannot write to it (tried to create and ")
    assert f"{output}/.stm-label-probe-" in message
    assert "access denied (InvalidAccessKeyId)" in message and "testing" not in message
    assert etags(s3_server.fs, output) == {}


def test_label_job_with_a_local_output_under_a_file(
    s3_server, corpus, checkpoint, tmp_path, capsys, no_ray
) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    output = str(blocker / "out")
    settings = label_settings(s3_server, corpus, output, checkpoint)
    code = label_corpus.main(["--config", write_yaml(tmp_path / "job.yaml", settings)])
    line = one_line(capsys.readouterr().err, "label_corpus: ")
    assert code == 2
    assert f"output_uri {output}: cannot write to it" in line
    assert line.endswith("not a directory (a part of the path is a file)")
    assert blocker.read_text() == "not a folder"


def test_a_new_local_output_folder_passes_and_is_not_left_behind(tmp_path) -> None:
    from pipeline.preflight import check_writable

    check_writable("output_uri", str(tmp_path / "a" / "b"))
    assert list(tmp_path.iterdir()) == []


# --- nightly and train ----------------------------------------------------------------------


def test_nightly_mistakes_are_one_line_before_ray(
    s3_server, corpus, tmp_path, capsys, no_ray
) -> None:
    store = s3_server.uri(f"preflight-store-{tmp_path.name}")
    base = {
        "store_uri": store,
        "corpus_uri": f"{corpus}/corpus",
        "seeds_uri": f"{corpus}/seeds.parquet",
        "heldout_uri": str(tmp_path / "no-heldout"),
        "storage": {"endpoint_url": s3_server.endpoint_url},
    }
    code = nightly.main(["--config", write_yaml(tmp_path / "n.yaml", base)])
    line = one_line(capsys.readouterr().err, "nightly: ")
    assert code == 2
    assert line == f"nightly: heldout_uri {tmp_path / 'no-heldout'}: cannot list it: does not exist"

    (tmp_path / "heldout").mkdir()
    dead = dead_endpoint()
    moved = {**base, "heldout_uri": str(tmp_path / "heldout"), "storage": {"endpoint_url": dead}}
    code = nightly.main(["--config", write_yaml(tmp_path / "n.yaml", moved)])
    line = one_line(capsys.readouterr().err, "nightly: ")
    assert code == 2
    assert f"corpus_uri {corpus}/corpus: cannot list it: endpoint {dead} unreachable" in line
    assert etags(s3_server.fs, store) == {}


def test_train_mistakes_are_one_line_before_ray(s3_server, tmp_path, capsys, no_ray) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    storage = {"endpoint_url": s3_server.endpoint_url}
    config = {"name": "t", "storage_path": str(blocker / "train"), "storage": storage}
    code = cli.main(["train", "--config", write_yaml(tmp_path / "t.yaml", config)])
    line = one_line(capsys.readouterr().err, "stm-label train: error: ")
    assert code == 2
    assert f"storage_path {blocker / 'train'}: cannot write to it" in line
    assert "not a directory" in line

    missing = "s3://stm-test/preflight-models/none.pt"
    config = {"name": "t", "storage_path": str(tmp_path / "runs"), "init_checkpoint": missing}
    config["storage"] = storage
    code = cli.main(["train", "--config", write_yaml(tmp_path / "t.yaml", config)])
    line = one_line(capsys.readouterr().err, "stm-label train: error: ")
    assert code == 2
    assert line.endswith(f"init_checkpoint {missing}: cannot read the checkpoint: does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "t.yaml"]  # no runs/


# --- the commands that read a run or a store -----------------------------------------------


def test_export_preview_history_with_a_wrong_endpoint(aws_test_env, tmp_path, capsys) -> None:
    dead = dead_endpoint()
    run = "s3://stm-test/preflight-out/runs/r1"
    out = tmp_path / "export"
    commands = {
        "export": ["export", "--run", run, "--format", "davis", "--out", str(out)],
        "preview": ["preview", "--run", run, "--video", "v1", "--out", str(out / "v.gif")],
        "history": ["history", "--store", "s3://stm-test/preflight-out"],
    }
    for name, argv in commands.items():
        started = time.monotonic()
        code = cli.main([*argv, "--storage-endpoint", dead])
        line = one_line(capsys.readouterr().err, f"stm-label {name}: error: ")
        assert code == 2, name
        key = "--store" if name == "history" else "--run"
        assert f"{key} s3://stm-test/preflight-out" in line, name
        assert f"cannot read it: endpoint {dead} unreachable (connection refused)" in line, name
        assert time.monotonic() - started < SECONDS, name
    assert not out.exists()


def test_a_missing_bucket_and_a_local_output_under_a_file(s3_server, tmp_path, capsys) -> None:
    endpoint = ["--storage-endpoint", s3_server.endpoint_url]
    run = f"{NO_BUCKET}/out/runs/r1"
    out = tmp_path / "p.gif"
    code = cli.main(["preview", "--run", run, "--video", "v", "--out", str(out), *endpoint])
    line = one_line(capsys.readouterr().err, "stm-label preview: error: ")
    assert code == 2
    assert line.endswith(f"--run {run}: cannot read it: no such bucket 'no-such-bucket'")

    blocker = tmp_path / "file"
    blocker.write_text("")
    run = s3_server.uri("preflight-none/runs/r1")  # not there: open_run would say so later
    argv = ["export", "--run", run, "--format", "coco", "--out", str(blocker / "x"), *endpoint]
    code = cli.main(argv)
    line = one_line(capsys.readouterr().err, "stm-label export: error: ")
    assert code == 2
    assert f"--out {blocker / 'x'}: cannot write to it" in line and "not a directory" in line


def test_correct_with_refused_credentials(s3_server, tmp_path, capsys, auth_on) -> None:
    mask = tmp_path / "m.png"
    mask.write_bytes(b"\x89PNG")  # never read: the store is checked first
    run = s3_server.uri("preflight-store/runs/r1")
    argv = ["correct", "--run", run, "--video", "v", "--frame", "0", "--mask", str(mask)]
    code = cli.main([*argv, "--storage-endpoint", s3_server.endpoint_url])
    line = one_line(capsys.readouterr().err, "stm-label correct: error: ")
    assert code == 2
    assert f"--run {run}: cannot read it: access denied" in line
