"""What a person sees of a real labeling run (``jobs/label_corpus.py``): local Ray (2 CPUs) and
S3 on loopback (moto), as in ``test_label_job.py``. What must hold:

- the log says what discovery found; plain ``progress:`` lines appear where stderr is not a
  terminal; the summary at the end gives the counts and the errors table's rows (a video without
  seeds is listed, so nobody has to query Parquet to learn it);
- Ctrl-C (SIGINT to a real ``python jobs/label_corpus.py`` process, sent once its first shard is
  committed) stops with exit code 130 and one line naming the committed shards and the command
  that resumes; running that command again finishes the run, skipping the committed shards.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from corpus_factory import CorpusBuilder, make_checkpoint, read_output, synthetic_video, upload_tree

from jobs import label_corpus
from pipeline import ledger

REPO = Path(__file__).resolve().parents[2]
INTERRUPT_TIMEOUT_S = 180.0


def job_settings(s3_server, base: str, output: str, checkpoint: Path, run_id: str, **more):
    settings = {
        "corpus_uri": f"{base}/corpus",
        "seeds_uri": f"{base}/seeds.parquet",
        "output_uri": output,
        "run_id": run_id,
        "checkpoint_uri": str(checkpoint),
        "cpu_threads_per_worker": 1,
        "videos_per_shard": 1,
        "storage": {"endpoint_url": s3_server.endpoint_url, "key": "testing", "secret": "testing"},
    }
    return settings | more


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "random-resnet18.pt", seed=2)


def test_a_run_logs_discovery_prints_progress_and_summarises_its_errors(
    ray_local,
    s3_server,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    builder = CorpusBuilder(tmp_path / "src")
    builder.add_video("swan", synthetic_video(1, 6), {0: (1, 2)})
    builder.add_video("clips/a.mp4", synthetic_video(2, 6, (64, 96), 1), {0: (1,)})
    builder.frame_folder("noseeds", synthetic_video(3, 4).frames)  # no seed anywhere
    builder.write_seed_table()
    base = upload_tree(s3_server.fs, builder.root, s3_server.uri("progress-corpus"))
    output = s3_server.uri("progress-out")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_settings(s3_server, base, output, checkpoint, "prog-1")))

    with caplog.at_level(logging.INFO, logger="pipeline.corpus_job"):
        code = label_corpus.main(["--config", str(job)])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert (
        "run prog-1: 2 videos: 1 video file, 1 frame folder; 1 problem (no_seeds: 1; "
        "see the errors table)" in caplog.messages
    )
    progress = [line for line in err.splitlines() if line.startswith("progress: ")]
    assert progress, err[-3000:]  # stderr is not a terminal here: plain lines, no bar
    assert progress[-1].startswith("progress: 2/2 shards, 2/2 videos, 12/12 frames, ")
    assert "done in" in progress[-1]

    lines = out.splitlines()
    assert lines[0].startswith("run prog-1 succeeded in ")
    assert "  videos: 2 videos labeled, 1 failed" in lines
    assert any(line.startswith("  frames: 12 labeled, ") for line in lines)
    assert "  errors: 1 row (errors/run_id=prog-1/ in the output)" in lines
    row = next(line for line in lines if line.startswith("    noseeds"))
    assert row.split()[:3] == ["noseeds", "seed", "no_seeds"] and "no seeds" in row
    assert "testing" not in out + err  # the storage secret is never printed


def test_ctrl_c_stops_with_one_line_and_the_same_command_resumes(
    ray_local,
    s3_server,
    checkpoint: Path,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Three shards of one 60-frame video each, labeled one after the other by one worker in a
    process of its own (with its own local Ray); SIGINT as soon as the first shard is there."""
    builder = CorpusBuilder(tmp_path / "src")
    for n in range(3):
        builder.add_video(f"v{n}", synthetic_video(20 + n, 60), {0: (1, 2)})
    builder.write_seed_table()
    base = upload_tree(s3_server.fs, builder.root, s3_server.uri("ctrl-c-corpus"))
    output = s3_server.uri("ctrl-c-out")
    run_id = "ctrl-c-1"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(job_settings(s3_server, base, output, checkpoint, run_id, workers=1))
    )
    env = {
        k: v
        for k, v in subprocess_env.items()
        if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    command = [sys.executable, "jobs/label_corpus.py", "--config", str(job)]
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        child = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
        try:
            deadline = time.monotonic() + INTERRUPT_TIMEOUT_S
            while not ledger.finished_shards(output, run_id, s3_server.storage):
                assert child.poll() is None, stderr_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no shard was committed in time"
                time.sleep(0.1)
            child.send_signal(signal.SIGINT)
            code = child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    text = stderr_path.read_text()
    assert code == 130, text[-3000:]
    committed = len(ledger.finished_shards(output, run_id, s3_server.storage))
    assert 1 <= committed < 3, "the run was not interrupted before its end"
    assert not ledger.is_committed(output, run_id, s3_server.storage)
    # Ray's worker processes may still print to the driver's stderr (prefixed "(pid=N)").
    last = [line for line in text.strip().splitlines() if "(pid=" not in line][-1]
    assert last == (
        f"interrupted: {committed} of 3 shards committed to {output}; the same command resumes "
        f"run {run_id}: {sys.executable} jobs/label_corpus.py --config {job}"
    )
    assert "Traceback" not in text

    # The same command again (here in this process, on the session's Ray) finishes the run.
    assert label_corpus.main(["--config", str(job), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "succeeded"
    assert (summary["shards"], summary["shards_skipped"]) == (3, committed)
    assert (summary["videos_skipped"], summary["videos_labeled"]) == (committed, 3 - committed)
    assert summary["frames_labeled"] == 60 * (3 - committed) and summary["frames"] == 180
    masks = read_output(output, s3_server.storage, "masks")
    assert sorted(set(masks["video_id"].to_pylist())) == ["v0", "v1", "v2"]
    assert ledger.is_committed(output, run_id, s3_server.storage)
