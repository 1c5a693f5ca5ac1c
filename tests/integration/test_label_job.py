"""The corpus labeling job on a local Ray with the corpus and the output on S3 (moto on loopback).

A corpus of two DAVIS frame folders and an mp4, seeded from a Parquet table, is labeled by
``run_label_job`` (two CPU actors, two shards). What must hold:

- the stored masks are exactly what ``stm_core.propagate`` gives when run directly, in this
  process, on the same frames with the same checkpoint and settings (the Ray path adds nothing
  and loses nothing);
- every (video, frame, object) has one row; objects not yet seeded have rows with area 0; seed
  rows are ``is_seed`` and hold the seed mask exactly;
- the masks folder reads as one pyarrow dataset (hive partitioning); the run record and the
  ``_SUCCESS`` marker exist;
- running the same run id again changes nothing; a run whose shard was lost (masks file gone,
  errors file left: a crash between the two writes) resumes to the same tables;
- on a node with 4 logical GPUs (a separate Ray in a subprocess) 4 actors are placed, each sees
  only its own GPU, and each still labels (on the CPU, since the GPUs are not real).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_factory import (
    CorpusBuilder,
    etags,
    make_checkpoint,
    read_output,
    synthetic_video,
    upload_tree,
)

from pipeline import ledger
from pipeline.corpus import discover, iter_frames, probe, read_seeds
from pipeline.corpus_job import RunSummary, run_label_job
from pipeline.rle import decode
from pipeline.storage import open_fs
from schemas.label_job import LabelJobConfig
from stm_core import load_model, propagate
from stm_core.adaptation import Adaptation, adapt_to_seeds

RUN_ID = "label-it-1"
MEM_EVERY = 2
MAX_MEMORY_FRAMES = 2  # below the frame count, so eviction happens in every video
# video id -> (frames, object ids, {seeded frame: objects seeded there})
VIDEOS: dict[str, tuple[int, tuple[int, ...], dict[int, tuple[int, ...]]]] = {
    "swan": (6, (1, 2), {0: (1, 2)}),
    "bear": (6, (1, 2), {0: (1,), 3: (2,)}),  # object 2 enters on frame 3
    "clips/a.mp4": (6, (1,), {1: (1,)}),  # frame 0 comes before any seed
}
GPU_SCRIPT = """
import json, sys
from dataclasses import asdict
import ray
from pipeline.corpus_job import run_label_job
from schemas.label_job import LabelJobConfig

config = LabelJobConfig.model_validate(json.loads(sys.argv[1]))
ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False)
try:
    summary = run_label_job(config)
finally:
    ray.shutdown()
print("SUMMARY " + json.dumps(asdict(summary)), flush=True)
"""
GPU_TIMEOUT_S = 300


@dataclass(frozen=True)
class Corpus:
    corpus_uri: str
    seeds_uri: str
    builder: CorpusBuilder


def config_dict(
    s3_server, corpus: Corpus, output_uri: str, checkpoint: Path, **overrides: object
) -> dict:
    """Settings as a YAML/JSON file would give them (secrets in clear, so a subprocess can
    rebuild the config)."""
    settings: dict = {
        "corpus_uri": corpus.corpus_uri,
        "seeds_uri": corpus.seeds_uri,
        "output_uri": output_uri,
        "run_id": RUN_ID,
        "checkpoint_uri": str(checkpoint),
        "cpu_threads_per_worker": 1,
        "mem_every": MEM_EVERY,
        "max_memory_frames": MAX_MEMORY_FRAMES,
        "videos_per_shard": 2,
        "storage": {"endpoint_url": s3_server.endpoint_url, "key": "testing", "secret": "testing"},
    }
    settings.update(overrides)
    return settings


def label_workers() -> set[str]:
    """Ids of every labeling actor this Ray cluster has had, alive or dead (state API)."""
    from ray.util.state import list_actors

    return {a.actor_id for a in list_actors(filters=[("class_name", "=", "LabelWorker")])}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "random-resnet18.pt", seed=0)


@pytest.fixture(scope="module")
def corpus(s3_server, tmp_path_factory) -> Corpus:
    builder = CorpusBuilder(tmp_path_factory.mktemp("corpus"))
    for n, (video_id, (frames, objects, seeds)) in enumerate(VIDEOS.items()):
        enters = {k: min(f for f, ids in seeds.items() if k in ids) for k in objects}
        size = (64, 96) if video_id.endswith(".mp4") else (48, 64)
        video = synthetic_video(10 + n, frames, size, len(objects), enters)
        builder.add_video(video_id, video, seeds)
    builder.write_seed_table()
    uri = upload_tree(s3_server.fs, builder.root, s3_server.uri("label-job-corpus"))
    return Corpus(f"{uri}/corpus", f"{uri}/seeds.parquet", builder)


@pytest.fixture(scope="module")
def first_run(ray_local, s3_server, corpus: Corpus, checkpoint: Path) -> tuple[str, RunSummary]:
    """The undisturbed run every test of this module compares with."""
    output = s3_server.uri("label-job-out-a")
    config = LabelJobConfig.model_validate(config_dict(s3_server, corpus, output, checkpoint))
    return output, run_label_job(config)


def reference_masks(
    s3_server, corpus: Corpus, checkpoint: Path, adaptation: Adaptation | None = None
) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray, tuple[int, ...]]]:
    """(video, frame) -> (labels H x W, probs (1+N) x H x W, object ids) from ``propagate``
    run here on the frames as ``iter_frames`` decodes them from S3, one torch thread like a
    worker with ``cpu_threads_per_worker=1``; with ``adaptation``, each video is propagated by
    a copy of the model fine-tuned on that video's seed frames."""
    found = discover(corpus.corpus_uri, s3_server.storage, corpus.seeds_uri)
    assert found.errors == []
    fs, _ = open_fs(corpus.corpus_uri, s3_server.storage)
    model = load_model(checkpoint, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for task in found.tasks:
            info = probe(task, fs)
            seeds = read_seeds(task, fs, info.size, info.num_frames)
            video_model = model
            if adaptation is not None:
                decoded = list(iter_frames(task, fs, None, info.size))
                seed_frames = {t: decoded[t] for t in seeds}
                video_model = adapt_to_seeds(model, seed_frames, seeds, adaptation)
            frames = iter_frames(task, fs, None, info.size)
            for result in propagate(video_model, frames, seeds, MEM_EVERY, MAX_MEMORY_FRAMES):
                out[task.video_id, result.frame_index] = (
                    result.labels,
                    result.probs,
                    result.object_ids,
                )
    finally:
        torch.set_num_threads(threads)
    return out


def bbox_of(mask: np.ndarray) -> list[float]:
    """[x, y, w, h] of a mask's foreground (x = column), zeros when empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [
        float(cols.min()),
        float(rows.min()),
        float(cols.max() - cols.min() + 1),
        float(rows.max() - rows.min() + 1),
    ]


def test_masks_equal_direct_propagation(
    s3_server, corpus: Corpus, checkpoint: Path, first_run: tuple[str, RunSummary]
) -> None:
    output, summary = first_run
    masks = read_output(output, s3_server.storage, "masks")
    expected_keys = [
        (video, t, k)
        for video, (frames, objects, _) in sorted(VIDEOS.items())
        for t in range(frames)
        for k in objects
    ]
    got_keys = list(
        zip(
            masks["video_id"].to_pylist(),
            masks["frame_index"].to_pylist(),
            masks["object_id"].to_pylist(),
            strict=True,
        )
    )
    assert got_keys == expected_keys  # one row each, none missing, none twice

    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    reference = reference_masks(s3_server, corpus, checkpoint)
    seeds = corpus.builder.expected_seeds
    absent = 0
    for row in masks.to_pylist():
        video, t, k = row["video_id"], row["frame_index"], row["object_id"]
        labels, probs, object_ids = reference[video, t]
        height, width = labels.shape
        assert (row["height"], row["width"]) == (height, width)
        mask = decode(row["rle"], height, width)
        where = f"{video} frame {t} object {k}"
        np.testing.assert_array_equal(mask, labels == k, err_msg=where)
        assert row["area"] == int(mask.sum()), where
        assert row["bbox"] == pytest.approx(bbox_of(mask)), where
        assert row["run_id"] == RUN_ID and row["checkpoint_id"] == f"sha256:{digest}"
        assert row["frame_name"] == (f"{t:06d}" if video.endswith(".mp4") else f"{t:05d}")
        seeded = t in seeds[video] and k in np.unique(seeds[video][t])
        assert row["is_seed"] == seeded, where
        if seeded:
            np.testing.assert_array_equal(mask, seeds[video][t] == k, err_msg=where)
            assert row["score"] == 1.0
        elif row["area"] == 0:
            absent += 1
            assert row["score"] == 0.0
        else:  # mean probability of the object over its own pixels
            channel = 1 + object_ids.index(k)
            assert row["score"] == pytest.approx(float(probs[channel][mask].mean()), abs=1e-6)
    # bear's object 2 before frame 3, and every object on the mp4's unseeded frame 0
    assert absent >= 3 + 1

    errors = read_output(output, s3_server.storage, "errors")
    assert errors.num_rows == 0
    layout = ledger.RunLayout(output, RUN_ID)
    names = sorted(etags(s3_server.fs, layout.masks_dir))
    assert names == ["shard-00000.parquet", "shard-00001.parquet"]
    assert ledger.read_success(output, RUN_ID, s3_server.storage).shards == 2
    record = json.loads(s3_server.fs.cat_file(layout.record_uri.removeprefix("s3://")))
    assert record["status"] == summary.status == "succeeded"
    assert (record["masks"], record["frames"], record["videos"]) == (masks.num_rows, 18, 3)
    assert record["shards"] == 2 and record["shards_skipped"] == 0
    assert record["checkpoint_id"] == f"sha256:{digest}"
    assert record["config"]["mem_every"] == MEM_EVERY
    assert "testing" not in json.dumps(record["config"]["storage"])  # no credentials stored
    assert len(summary.workers) == 2 and all(w["device"] == "cpu" for w in summary.workers)


def test_adapted_labels_equal_direct_adaptation(
    ray_local, s3_server, corpus: Corpus, checkpoint: Path, first_run: tuple[str, RunSummary]
) -> None:
    """With ``adaptation.steps`` set, each video is labeled by its own fine-tuned copy (from
    every seed frame, including bear's frame 3 and the mp4's frame 1): the stored masks equal
    adapt_to_seeds + propagate run here, and differ from the unadapted run's."""
    settings = {"steps": 3, "lr": 1e-3, "batch_size": 1, "crop": [32, 32], "seed": 4}
    output = s3_server.uri("label-job-out-adapted")
    config = LabelJobConfig.model_validate(
        config_dict(s3_server, corpus, output, checkpoint, adaptation=settings)
    )
    summary = run_label_job(config)
    assert summary.status == "succeeded" and summary.errors == 0
    masks = read_output(output, s3_server.storage, "masks")
    adaptation = Adaptation(**{**settings, "crop": (32, 32)})
    reference = reference_masks(s3_server, corpus, checkpoint, adaptation)
    for row in masks.to_pylist():
        video, t, k = row["video_id"], row["frame_index"], row["object_id"]
        labels = reference[video, t][0]
        mask = decode(row["rle"], *labels.shape)
        np.testing.assert_array_equal(mask, labels == k, err_msg=f"{video} frame {t} object {k}")
    plain = read_output(first_run[0], s3_server.storage, "masks")
    assert plain["rle"].to_pylist() != masks["rle"].to_pylist()
    record = ledger.RunLayout(output, RUN_ID).record_uri.removeprefix("s3://")
    assert json.loads(s3_server.fs.cat_file(record))["config"]["adaptation"]["steps"] == 3


def test_same_run_id_again_changes_nothing(
    s3_server, corpus: Corpus, checkpoint: Path, first_run: tuple[str, RunSummary]
) -> None:
    output, first = first_run
    before = etags(s3_server.fs, output)
    masks = read_output(output, s3_server.storage, "masks")
    actors = label_workers()
    config = LabelJobConfig.model_validate(config_dict(s3_server, corpus, output, checkpoint))
    again = run_label_job(config)
    assert label_workers() == actors  # no actor was started
    assert etags(s3_server.fs, output) == before  # not one object rewritten or added
    assert read_output(output, s3_server.storage, "masks").equals(masks)
    assert again == first  # the summary of a committed run is its record


def test_a_lost_shard_is_redone_and_the_tables_are_identical(
    s3_server, corpus: Corpus, checkpoint: Path, first_run: tuple[str, RunSummary]
) -> None:
    """A copy of the finished run, set back to the state of a crash between the two writes of
    shard 1 (its errors file written, its masks file not) before the commit."""
    output, _ = first_run
    resumed = s3_server.uri("label-job-out-resume")
    s3_server.fs.copy(output.removeprefix("s3://"), resumed.removeprefix("s3://"), recursive=True)
    layout = ledger.RunLayout(resumed, RUN_ID)
    for uri in (layout.masks_file("shard-00001"), layout.record_uri, layout.success_uri):
        s3_server.fs.rm_file(uri.removeprefix("s3://"))
    assert not ledger.is_committed(resumed, RUN_ID, s3_server.storage)
    untouched = etags(s3_server.fs, layout.masks_file("shard-00000"))

    config = LabelJobConfig.model_validate(config_dict(s3_server, corpus, resumed, checkpoint))
    summary = run_label_job(config)
    assert (summary.status, summary.shards, summary.shards_skipped) == ("succeeded", 2, 1)
    assert len(summary.workers) == 1  # one shard to do: one actor
    assert etags(s3_server.fs, layout.masks_file("shard-00000")) == untouched  # skipped, not redone
    for table in ("masks", "errors"):
        assert read_output(resumed, s3_server.storage, table).equals(
            read_output(output, s3_server.storage, table)
        )
    assert ledger.is_committed(resumed, RUN_ID, s3_server.storage)


def test_gpu_workers_are_pinned_one_per_device(
    s3_server, corpus: Corpus, checkpoint: Path, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """A separate local Ray with 4 logical GPUs and 2 CPUs: 4 shards of one video each go to 4
    actors, one per GPU id. The GPUs are not real, so each actor labels on the CPU.

    The run also limits the frame side (``max_frame_side``, 48 x 64 frames labeled at 24 x 32):
    masks must still be stored at the video's own size, seeds exactly as given."""
    builder = CorpusBuilder(tmp_path / "gpu")
    for n in range(4):
        video = synthetic_video(40 + n, 4, (48, 64), 1)
        builder.add_video(f"v{n}", video, {0: (1,)})
    builder.write_seed_table()
    uri = upload_tree(s3_server.fs, builder.root, s3_server.uri("label-job-gpu"))
    gpu_corpus = Corpus(f"{uri}/corpus", f"{uri}/seeds.parquet", builder)
    output = f"{uri}/out"
    settings = config_dict(
        s3_server, gpu_corpus, output, checkpoint, videos_per_shard=1, max_frame_side=32
    )
    env = {
        k: v
        for k, v in subprocess_env.items()
        if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    done = subprocess.run(
        [sys.executable, "-c", GPU_SCRIPT, json.dumps(settings)],
        env=env,
        capture_output=True,
        text=True,
        timeout=GPU_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SUMMARY "))
    summary = json.loads(line.removeprefix("SUMMARY "))
    assert summary["status"] == "succeeded" and summary["shards"] == 4
    workers = summary["workers"]
    assert len(workers) == 4
    assert sorted(w["gpu_ids"][0] for w in workers) == [0, 1, 2, 3]
    for w in workers:
        assert len(w["gpu_ids"]) == 1, w
        assert w["cuda_visible_devices"] == str(w["gpu_ids"][0]), w
        assert w["device"] == "cpu", w
    assert len({w["pid"] for w in workers}) == 4
    # 4 shards submitted to 4 idle actors: one each, so every actor labeled its video
    masks = read_output(output, s3_server.storage, "masks")
    assert sorted(set(masks["video_id"].to_pylist())) == ["v0", "v1", "v2", "v3"]
    assert masks.num_rows == 4 * 4
    sizes = zip(masks["height"].to_pylist(), masks["width"].to_pylist(), strict=True)
    assert set(sizes) == {(48, 64)}  # the native size, not the working 24 x 32
    for row in masks.filter(masks["is_seed"]).to_pylist():
        seed = builder.expected_seeds[row["video_id"]][row["frame_index"]]
        np.testing.assert_array_equal(decode(row["rle"], 48, 64), seed == row["object_id"])
    assert masks.filter(masks["is_seed"]).num_rows == 4
