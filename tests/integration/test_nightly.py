"""The nightly data engine on a local Ray, with the corpus, the held-out set and the store on S3
(moto on loopback), starting from a shipped model (v4).

The corpus is "night vision" footage (``stm_core.training.domains``): the synthetic world v4
was trained on, seen through dark, grainy, green monochrome, a look it never saw. The nights start
from v4 (the second shipped asset), not from the default: what is tested is the engine, and it
needs a root that twelve CPU steps on 96 x 96 crops move clearly. v4 is such a model (8.4 ->
16.5 J&F); the Lite0 model trained on real footage at 256 x 256 (v7, stage 1 of the default v8)
scored 0.0 on these 96 x 160 night videos and twelve such steps left it there (0.0 -> 0.1).
Only frame 0 of each corpus video has a seed; a disjoint set of videos with full ground truth is
the gate's held-out set. What must hold:

- one night labels every new video, selects seeds and confident pseudo-labels, fine-tunes on
  Ray Train, and the candidate's held-out J&F is higher than the root model's: it is
  registered as its child, promoted, and labeling uses it by default;
- corrections are applied: the next night relabels exactly the corrected videos, with the
  corrections as seeds on their frames; trained on deliberately wrong corrections, the candidate
  is worse, is not promoted, and labeling keeps the previous checkpoint;
- a nightly run killed during training and submitted again finishes with one candidate;
- a second nightly run on a locked store stops before doing anything.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from corpus_factory import upload_tree
from ray_train_watch import checkpoint_dirs, ray_latest_checkpoint, wait_for_cpus_free

from pipeline import table_io
from pipeline.engine.corrections import add_correction
from pipeline.engine.layout import EngineLayout
from pipeline.engine.lock import LockHeldError, StoreLock
from pipeline.engine.nightly import run_nightly
from pipeline.engine.registry import read_promoted, read_registry
from pipeline.engine.run_inputs import resolve_label_inputs
from pipeline.run_reader import open_run
from schemas.label_job import LabelJobConfig
from schemas.nightly import NightlyConfig
from schemas.tables import SELECTION
from stm_core.assets import V4_CHECKPOINT_NAME, asset_path
from stm_core.io import write_mask
from stm_core.training.domains import shifted_videos
from stm_core.training.heldout import save_as_davis

REPO = Path(__file__).resolve().parents[2]
SIZE = (96, 160)
CORPUS_SEEDS, HELDOUT_SEEDS = 3000, 4000  # disjoint: the gate never scores a corpus video
# Twelve steps must move the shipped model clearly on its held-out night footage: at lr 1e-4 the
# v2 model gained 0.5 J&F points (below the 1-point gate margin), at 3e-4 about 12 (0.0 -> 12.2
# on the held-out videos below; v4, the root here, 8.4 -> 16.5).
TRAIN = {
    "steps": 12,
    "crop": [96, 96],
    "batch_size": 4,
    "lr": 3e-4,
    "warmup_steps": 2,
    "checkpoint_every": 4,
    "threads_per_worker": 2,
    "max_frame_side": None,
}
KILL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def night_data(s3_server, tmp_path_factory) -> dict[str, str]:
    """Corpus (3 videos, seeds on frame 0 only) and held-out set (2 videos, every frame
    annotated, their objects in view on every frame: else predicting nothing scores well once
    an object leaves), uploaded once for the module."""
    root = tmp_path_factory.mktemp("night")
    corpus = save_as_davis(shifted_videos(3, 12, SIZE, CORPUS_SEEDS), root / "corpus")
    for mask in (corpus / "Annotations" / "480p").rglob("*.png"):
        if mask.name != "00000.png":
            mask.unlink()
    heldout_videos = shifted_videos(2, 10, SIZE, HELDOUT_SEEDS, visible_throughout=True)
    heldout = save_as_davis(heldout_videos, root / "heldout")
    prefix = s3_server.uri(f"night-data-{time.monotonic_ns()}")
    return {
        "corpus": upload_tree(s3_server.fs, corpus, f"{prefix}/corpus"),
        "heldout": upload_tree(s3_server.fs, heldout, f"{prefix}/heldout"),
        "local_corpus": str(corpus),
    }


def night_config(store: str, data: dict[str, str], s3_server, **changes) -> NightlyConfig:
    settings = {
        "store_uri": store,
        "initial_checkpoint_uri": str(asset_path(V4_CHECKPOINT_NAME)),
        "corpus_uri": data["corpus"],
        "heldout_uri": data["heldout"],
        "run_id": "night-1",
        "relabel": "changed",
        "label": {"videos_per_shard": 2},
        "train": TRAIN,
        "gate": {"margin": 1.0},
        # v4 finds objects in night vision but less surely than in daylight: at the default
        # 0.85 none of its corpus masks passed, so the night would learn from seeds alone.
        "selection": {"min_score": 0.6},
        "lock_ttl_seconds": 60,
        "storage": s3_server.storage,
    }
    for key, value in changes.items():
        if isinstance(value, dict):
            settings[key] = settings.get(key, {}) | value
        else:
            settings[key] = value
    return NightlyConfig.model_validate(settings)


def default_checkpoint_id(store: str, data: dict[str, str], s3_server) -> str:
    """The checkpoint a labeling run on ``store`` uses when its config names none."""
    config = LabelJobConfig(
        corpus_uri=data["corpus"], output_uri=store, run_id="probe", storage=s3_server.storage
    )
    return resolve_label_inputs(config).checkpoint[1]


def test_nights_promote_a_better_model_and_refuse_a_worse_one(
    ray_local, s3_server, s3_prefix, night_data, tmp_path
):
    store = s3_prefix
    layout = EngineLayout(store)
    first = run_nightly(night_config(store, night_data, s3_server))

    assert first.status == "succeeded"
    assert first.label_reasons == {"new": 3}
    selection = SELECTION.check(
        table_io.read_table(layout.selection_uri("night-1"), s3_server.storage)
    )
    sources = selection["source"].to_pylist()
    assert sources.count("seed") >= 3 and "pseudo" in sources
    seeded = {
        (v, f)
        for v, f, s in zip(
            selection["video_id"].to_pylist(),
            selection["frame_index"].to_pylist(),
            sources,
            strict=True,
        )
        if s == "seed"
    }
    assert {f for _, f in seeded} == {0}
    # The fine-tune on its own night-vision footage beats the root model there.
    assert first.candidate_jf > first.parent_jf + 0.01, first.reason
    assert first.promoted, first.reason
    registry = read_registry(layout, s3_server.storage).to_pylist()
    root, candidate = registry
    assert root["parent_id"] is None and root["promoted"]
    assert candidate["parent_id"] == root["checkpoint_id"] == first.parent_checkpoint_id
    assert candidate["checkpoint_id"] == first.candidate_id
    assert candidate["jf"] == pytest.approx(first.candidate_jf)
    assert read_promoted(layout, s3_server.storage).checkpoint_id == first.candidate_id
    assert default_checkpoint_id(store, night_data, s3_server) == first.candidate_id
    # Submitting the finished night again changes nothing.
    again = run_nightly(night_config(store, night_data, s3_server))
    assert again.candidate_id == first.candidate_id and again.finished_at == first.finished_at
    assert read_registry(layout, s3_server.storage).num_rows == 2

    # Night 2: a careless annotator "corrects" every video with the inverse of its masks.
    run_uri = f"{store}/runs/night-1-label"
    run = open_run(run_uri, s3_server.storage)
    wrong = {}
    for video_id in run.video_ids():
        video = run.video(video_id)
        for frame in (3, 6, 9):
            labels = video.label_map(frame).labels
            inverse = np.where(labels == 0, video.object_ids[0], 0).astype(np.uint8)
            png = tmp_path / f"{video_id}-{frame}.png"
            write_mask(png, inverse)
            add_correction(
                run_uri,
                video_id,
                frame,
                png.read_bytes(),
                str(png),
                "careless",
                options=s3_server.storage,
            )
            wrong[(video_id, frame)] = inverse
    second = run_nightly(
        night_config(
            store,
            night_data,
            s3_server,
            run_id="night-2",
            selection={"pseudo_labels": False},
            train={"lr": 2e-3, "steps": 6},  # at this rate six steps on inverse masks ruin it
        )
    )
    assert second.status == "succeeded"
    assert second.label_reasons == {"corrected": 3}
    assert second.parent_checkpoint_id == first.candidate_id
    relabeled = open_run(f"{store}/runs/night-2-label", s3_server.storage)
    for (video_id, frame), inverse in wrong.items():
        labels = relabeled.video(video_id).label_map(frame).labels
        np.testing.assert_array_equal(labels, inverse)  # the correction is that frame's seed
    chosen = SELECTION.check(
        table_io.read_table(layout.selection_uri("night-2"), s3_server.storage)
    )
    assert set(chosen["source"].to_pylist()) == {"seed", "correction"}
    assert not second.promoted, second.reason
    assert second.candidate_jf < second.parent_jf
    rows = read_registry(layout, s3_server.storage).to_pylist()
    assert len(rows) == 3 and rows[-1]["checkpoint_id"] == second.candidate_id
    assert not rows[-1]["promoted"] and "kept" in rows[-1]["reason"]
    assert read_promoted(layout, s3_server.storage).checkpoint_id == first.candidate_id
    assert default_checkpoint_id(store, night_data, s3_server) == first.candidate_id


CHILD = """
import sys
sys.argv = ["nightly", "--config", sys.argv[1], "--address", sys.argv[2]]
from jobs.nightly import main
sys.exit(main())
"""


def test_a_night_killed_in_training_and_resubmitted_makes_one_candidate(
    ray_local, s3_server, s3_prefix, night_data, tmp_path, subprocess_env, capfd
):
    store = s3_prefix
    layout = EngineLayout(store)
    config = night_config(
        store,
        night_data,
        s3_server,
        run_id="night-k",
        lock_ttl_seconds=4,
        # Only the run's bookkeeping is tested here, not what it learns: small, cheap steps,
        # and enough of them after the kill point (step 4) that the kill lands mid-training.
        train={"steps": 20, "checkpoint_every": 4, "batch_size": 2, "crop": [64, 64]},
    )
    settings = config.model_dump(mode="json")
    settings["storage"] = {"endpoint_url": s3_server.endpoint_url}  # keys come from the env
    config_file = tmp_path / "nightly.json"
    config_file.write_text(json.dumps(settings))
    log_path = tmp_path / "child.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(config_file), ray_local.address_info["gcs_address"]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=subprocess_env,
            cwd=REPO,
        )
    run_dir = f"{layout.training_dir}/night-k-finetune".removeprefix("s3://")
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while _recorded_step(s3_server.fs, run_dir) < 4:  # Ray Train knows a checkpoint
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"no training checkpoint (exit {child.returncode}):\n"
                    + log_path.read_text()[-3000:]
                )
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    capfd.readouterr()
    wait_for_cpus_free()  # the killed driver's trainer is gone: nothing writes to the run now
    latest = ray_latest_checkpoint(s3_server.fs, run_dir)
    killed_at = int(latest["metrics"]["step"])
    assert 4 <= killed_at < config.train.steps  # killed in training, not after it
    killed_history = json.loads(
        s3_server.fs.cat_file(f"{run_dir}/{latest['checkpoint_dir_name']}/history.json")
    )
    assert [int(step) for step, _ in killed_history] == list(range(killed_at))

    # The dead run's lock is still there: a resubmission right now is refused...
    with pytest.raises(LockHeldError, match="night-k"):
        run_nightly(config)
    time.sleep(config.lock_ttl_seconds + 0.5)  # ...and accepted once the lock has expired.
    record = run_nightly(config)

    assert record.status == "succeeded"
    assert record.training_name == "night-k-finetune"
    rows = read_registry(layout, s3_server.storage).to_pylist()
    candidates = [r for r in rows if r["nightly_run_id"] == "night-k"]
    assert len(candidates) == 1 and candidates[0]["checkpoint_id"] == record.candidate_id
    assert len(rows) == 2  # the root and the one candidate
    final = checkpoint_dirs(s3_server.fs, run_dir)[-1]
    history = json.loads(s3_server.fs.cat_file(f"{final}/history.json"))
    assert [int(step) for step, _ in history] == list(range(config.train.steps))
    # Ray Train resumed the killed run from its newest checkpoint rather than starting over:
    # the killed run's losses are carried on as they were and only the missing steps trained.
    assert history[:killed_at] == killed_history
    assert f"resumed night-k-finetune at step {killed_at}" in capfd.readouterr().err


def _recorded_step(fs, run_dir: str) -> int:
    """The step of the newest checkpoint Ray Train has recorded for the run (0 if none): what a
    resumed run starts from."""
    latest = ray_latest_checkpoint(fs, run_dir) or {}
    return int(latest.get("metrics", {}).get("step", 0))


def test_a_second_night_on_a_locked_store_does_nothing(ray_local, s3_server, s3_prefix, night_data):
    config = night_config(s3_prefix, night_data, s3_server, run_id="night-b")
    layout = EngineLayout(s3_prefix)
    with StoreLock(layout.lock_uri, "night-a", 60, s3_server.storage):
        started = dt.datetime.now(dt.UTC)
        with pytest.raises(LockHeldError, match="night-a"):
            run_nightly(config)
    assert not table_io.exists(layout.nightly_record_uri("night-b"), s3_server.storage)
    assert not table_io.list_files(f"{s3_prefix}/runs", s3_server.storage)
    assert dt.datetime.now(dt.UTC) - started < dt.timedelta(seconds=30)
