"""The corpus labeling job when things go wrong: bad inputs, bad configs, a worker killed.

Local Ray (2 CPUs) and S3 on loopback (moto), as in ``test_label_job.py``. What must hold:

- every bad input of a corpus becomes exactly one row of the errors table (which stage, which
  error, which video, a message naming the file) and every good video is still labeled;
- a bad config or an unreadable checkpoint stops ``jobs/label_corpus.py`` with exit code 2 and
  a message naming the problem before anything is written;
- a labeling actor SIGKILLed while it labels a shard is restarted by Ray, the shard is redone,
  and the tables equal those of an undisturbed run: no row twice, none missing.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
import yaml
from corpus_factory import (
    CorpusBuilder,
    cut_in_last_packet,
    etags,
    make_checkpoint,
    mp4_bytes,
    read_output,
    synthetic_video,
    upload_tree,
)
from ray.util.state import list_actors

from jobs import label_corpus
from pipeline import ledger
from pipeline.corpus_job import RunSummary, run_label_job
from schemas.label_job import LabelJobConfig
from schemas.tables import ERROR_STAGES, SeedRow

RUN_ID = "faults-1"
KILL_TIMEOUT_S = 300.0
LABELING_TITLE = "ray::LabelWorker.label"  # Ray's process title while an actor runs label()
GOOD_FRAMES = 5


def settings(s3_server, base_uri: str, output_uri: str, checkpoint: Path, **overrides) -> dict:
    """Job settings as a YAML file holds them, for the corpus uploaded at ``base_uri``."""
    out = {
        "corpus_uri": f"{base_uri}/corpus",
        "seeds_uri": f"{base_uri}/seeds.parquet",
        "output_uri": output_uri,
        "run_id": RUN_ID,
        "checkpoint_uri": str(checkpoint),
        "cpu_threads_per_worker": 1,
        "mem_every": 3,
        "max_memory_frames": 3,
        "videos_per_shard": 2,
        "storage": {"endpoint_url": s3_server.endpoint_url, "key": "testing", "secret": "testing"},
    }
    out.update(overrides)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "random-resnet18.pt", seed=1)


@pytest.fixture(scope="module")
def bad_corpus(s3_server, tmp_path_factory) -> str:
    """Two good videos and one of every kind of bad input, on S3; returns the base URI.

    Sorted ids and 2 videos per shard put a bad video in every shard: (badframe,
    clips/cut.mp4), (clips/good.mp4, clips/truncated.mp4), (good, wrongsize).
    """
    builder = CorpusBuilder(tmp_path_factory.mktemp("bad"))
    builder.add_video("good", synthetic_video(1, GOOD_FRAMES), {0: (1, 2)})
    builder.add_video("clips/good.mp4", synthetic_video(2, GOOD_FRAMES), {0: (1, 2)})

    broken = synthetic_video(3, 6)
    builder.add_video("badframe", broken, {0: (1, 2)})
    builder.raw_file("JPEGImages/480p/badframe/00002.jpg", b"\xff\xd8 not a jpeg")
    # index at the end, cut off: the file does not open
    builder.raw_file("clips/truncated.mp4", cut_in_last_packet(mp4_bytes(broken.frames)))
    builder.seed("clips/truncated.mp4", 0, broken.labels[0])
    # index first: frames 0-4 decode, then the cut
    builder.raw_file("clips/cut.mp4", cut_in_last_packet(mp4_bytes(broken.frames, True)))
    builder.seed("clips/cut.mp4", 0, broken.labels[0])
    builder.raw_file("clips/empty.mp4", b"")
    builder.seed("clips/empty.mp4", 0, broken.labels[0])

    builder.frame_folder("wrongsize", broken.frames)  # 48 x 64 frames, a 32 x 32 seed
    square = np.zeros((32, 32), np.uint8)
    square[4:12, 4:12] = 1
    builder.seed("wrongsize", 0, square)
    builder.frame_folder("noseeds", broken.frames)
    builder.seeds.append(SeedRow("ghost", 0, 1, 48, 64, builder.seeds[0].rle))  # no such video
    builder.write_seed_table()
    return upload_tree(s3_server.fs, builder.root, s3_server.uri("faults-bad"))


def test_every_bad_input_is_one_error_row(
    ray_local, s3_server, bad_corpus: str, checkpoint: Path
) -> None:
    output = s3_server.uri("faults-bad-out")
    config = LabelJobConfig.model_validate(settings(s3_server, bad_corpus, output, checkpoint))
    summary = run_label_job(config)
    assert summary.status == "succeeded" and summary.shards == 3

    errors = read_output(output, s3_server.storage, "errors")  # checks every stage is known
    got = sorted(
        zip(
            errors["video_id"].to_pylist(),
            errors["stage"].to_pylist(),
            errors["error_type"].to_pylist(),
            strict=True,
        )
    )
    assert got == [
        ("badframe", "decode", "InputError"),
        ("clips/cut.mp4", "decode", "InputError"),
        ("clips/empty.mp4", "discover", "empty_file"),
        ("clips/truncated.mp4", "read", "InputError"),
        ("ghost", "seed", "seed_without_video"),
        ("noseeds", "seed", "no_seeds"),
        ("wrongsize", "seed", "InputError"),
    ]
    assert set(errors["stage"].to_pylist()) <= set(ERROR_STAGES)
    messages = dict(zip(errors["video_id"].to_pylist(), errors["message"].to_pylist(), strict=True))
    assert "badframe/00002.jpg" in messages["badframe"]
    assert "frame 2" in messages["badframe"]
    assert "clips/truncated.mp4" in messages["clips/truncated.mp4"]
    assert "clips/cut.mp4" in messages["clips/cut.mp4"]
    assert "seeds.parquet" in messages["wrongsize"] and "32x32" in messages["wrongsize"]
    assert "ghost" in messages["ghost"]
    assert (summary.errors, summary.videos) == (7, 2)

    masks = read_output(output, s3_server.storage, "masks")
    keys = list(zip(masks["video_id"].to_pylist(), masks["frame_index"].to_pylist(), strict=True))
    expected = [(v, t) for v in ("clips/good.mp4", "good") for t in range(GOOD_FRAMES)]
    assert keys == [k for k in expected for _ in (1, 2)]  # objects 1 and 2 on every frame
    assert summary.masks == masks.num_rows


@pytest.fixture(scope="module")
def good_corpus(s3_server, tmp_path_factory) -> str:
    """Three good 8-frame videos (one mp4): long enough for an actor to be caught labeling."""
    builder = CorpusBuilder(tmp_path_factory.mktemp("kill"))
    for n, video_id in enumerate(("k-a", "k-b", "k-c.mp4")):
        builder.add_video(video_id, synthetic_video(20 + n, 8), {0: (1, 2)})
    builder.write_seed_table()
    return upload_tree(s3_server.fs, builder.root, s3_server.uri("faults-kill"))


def test_an_unreadable_corpus_or_seed_uri_is_one_error_row_and_a_failed_run(
    ray_local, s3_server, good_corpus: str, checkpoint: Path
) -> None:
    cases = {
        "corpus": {"corpus_uri": s3_server.uri("faults-nothing-here")},
        "seeds": {"seeds_uri": f"{good_corpus}/no-such-seeds.parquet"},
    }
    for name, override in cases.items():
        output = s3_server.uri(f"faults-unreadable-{name}")
        config = settings(s3_server, good_corpus, output, checkpoint, **override)
        summary = run_label_job(LabelJobConfig.model_validate(config))
        errors = read_output(output, s3_server.storage, "errors")
        rows = list(zip(errors["video_id"].to_pylist(), errors["stage"].to_pylist(), strict=True))
        expected_stage = "discover" if name == "corpus" else "seed"
        assert rows == [(None, expected_stage)], name
        assert errors["error_type"].to_pylist() == ["unreadable_uri"], name
        uri = next(iter(override.values()))
        assert uri in errors["message"][0].as_py(), name
        assert (summary.masks, summary.errors, summary.workers) == (0, 1, []), name
        # Nothing could be labeled: the run failed and is not committed, so it can be retried.
        assert summary.status == "failed", name
        assert not ledger.is_committed(output, config["run_id"], s3_server.storage), name


def run_main(
    settings_: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> tuple[int, str]:
    """``jobs/label_corpus.py --config <yaml>`` in this process: (exit code, stderr)."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(settings_))
    # This process is already a Ray driver (the ray_local fixture); a job's own process is not.
    monkeypatch.setattr(ray, "init", functools.partial(ray.init, ignore_reinit_error=True))
    code = label_corpus.main(["--config", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"colour": "red"}, "colour"),  # unknown key
        ({"videos_per_shard": 0}, "videos_per_shard"),
        ({"run_id": "two words"}, "run_id"),
    ],
)
def test_a_bad_config_fails_fast_with_exit_code_2(
    ray_local,
    s3_server,
    bad_corpus: str,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: dict,
    complaint: str,
) -> None:
    output = s3_server.uri(f"faults-config-{tmp_path.name}")
    job = settings(s3_server, bad_corpus, output, checkpoint, **change)
    code, err = run_main(job, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert "bad config" in err and complaint in err
    assert "testing" not in err  # credentials never shown
    assert etags(s3_server.fs, output) == {}  # failed before writing anything


@pytest.mark.parametrize("kind", ["missing-on-s3", "not-a-checkpoint"])
def test_an_unreadable_checkpoint_fails_fast_with_exit_code_2(
    ray_local,
    s3_server,
    bad_corpus: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    if kind == "missing-on-s3":
        checkpoint = s3_server.uri("faults-ckpt/missing.pt")
        complaint = f"{checkpoint}: cannot read the checkpoint"
    else:
        checkpoint = str(tmp_path / "garbage.pt")
        Path(checkpoint).write_bytes(b"this is not a checkpoint")
        complaint = f"{checkpoint}: not a readable PyTorch checkpoint"
    output = s3_server.uri(f"faults-ckpt-{tmp_path.name}")
    job = settings(s3_server, bad_corpus, output, checkpoint)
    code, err = run_main(job, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert complaint in err
    assert etags(s3_server.fs, output) == {}  # failed before writing anything


# ---------------------------------------------------------------------------------------------
# a worker killed mid-shard


def label_worker_ids() -> set[str]:
    return {a.actor_id for a in list_actors(filters=[("class_name", "=", "LabelWorker")])}


def kill_while_labeling(run: Future, known: set[str], deadline: float) -> tuple[str, int]:
    """SIGKILL the new labeling actor's process while it is inside ``label()`` (its process
    title says so); returns (actor id, pid). Only actors not in ``known`` (this run's) count."""
    pid = actor_id = None
    while time.monotonic() < deadline and not run.done():
        if pid is None:
            alive = list_actors(
                filters=[("class_name", "=", "LabelWorker"), ("state", "=", "ALIVE")]
            )
            fresh = [a for a in alive if a.actor_id not in known and a.pid]
            if fresh:
                actor_id, pid = fresh[0].actor_id, fresh[0].pid
            else:
                time.sleep(0.2)
            continue
        try:
            title = psutil.Process(pid).cmdline()[0]
        except (psutil.Error, IndexError):
            title = ""
        if title == LABELING_TITLE:
            os.kill(pid, signal.SIGKILL)
            return actor_id, pid
        time.sleep(0.01)
    raise AssertionError("the run ended (or timed out) before a labeling actor could be killed")


def test_a_worker_killed_mid_shard_changes_nothing(
    ray_local, s3_server, good_corpus: str, checkpoint: Path
) -> None:
    reference = s3_server.uri("faults-kill-ref")
    undisturbed = run_label_job(
        LabelJobConfig.model_validate(
            settings(s3_server, good_corpus, reference, checkpoint, videos_per_shard=3)
        )
    )
    assert undisturbed.status == "succeeded"

    output = s3_server.uri("faults-kill-out")
    config = LabelJobConfig.model_validate(
        settings(s3_server, good_corpus, output, checkpoint, workers=1, videos_per_shard=1)
    )
    known = label_worker_ids()
    with ThreadPoolExecutor(1) as pool:
        run: Future[RunSummary] = pool.submit(run_label_job, config)
        actor_id, pid = kill_while_labeling(run, known, time.monotonic() + KILL_TIMEOUT_S)
        masks_dir = f"{output}/masks/run_id={RUN_ID}"
        finished_at_kill = len(etags(s3_server.fs, masks_dir))
        summary = run.result(timeout=KILL_TIMEOUT_S)

    assert finished_at_kill < 3  # the kill came before the last shard was written
    assert (summary.status, summary.shards, summary.shards_skipped) == ("succeeded", 3, 0)
    [actor] = list_actors(filters=[("actor_id", "=", actor_id)], detail=True)
    assert actor.num_restarts == 1 and actor.pid != pid  # Ray restarted it once

    masks = read_output(output, s3_server.storage, "masks")
    keys = list(
        zip(
            masks["video_id"].to_pylist(),
            masks["frame_index"].to_pylist(),
            masks["object_id"].to_pylist(),
            strict=True,
        )
    )
    assert len(set(keys)) == len(keys) == 3 * 8 * 2  # no row twice, none missing
    assert masks.equals(read_output(reference, s3_server.storage, "masks"))
    assert read_output(output, s3_server.storage, "errors").num_rows == 0
