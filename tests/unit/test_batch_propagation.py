"""Several videos through one model (stm_core.batch_propagation, label_shard's
``videos_per_batch``): the same labels as one video at a time, probabilities within 1e-4 in
fp32, failures confined to their video, and the shard's rows unchanged.

The shipped checkpoint is used, not random weights: a random network's probabilities sit so
close together that float rounding alone (batched kernels round differently) flips the argmax
of the odd pixel where two channels tie, while a trained model's labels have a margin.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from pipeline.corpus import RleSeed, VideoTask, discover
from pipeline.label_actor import ProgressTracker, TrackerEvents
from pipeline.label_shard import LabelSettings, ShardEvents, label_shard
from pipeline.rle import encode
from schemas.common import StorageOptions
from schemas.label_job import LabelJobConfig
from stm_core import STM, InputError, load_model, propagate
from stm_core.adaptation import Adaptation
from stm_core.assets import default_checkpoint_path
from stm_core.batch_propagation import (
    VideoEnd,
    VideoFrame,
    VideoInput,
    propagate_videos,
    step_sessions,
)
from stm_core.propagation import VideoSession

PROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model() -> STM:
    path = default_checkpoint_path()
    if path is None:
        pytest.skip("no shipped model in this installation")
    return load_model(path, device="cpu")


def frames(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """``n`` frames of a smooth background with a bright square drifting right."""
    rng = np.random.default_rng(seed)
    h, w = size
    base = rng.integers(40, 120, (h, w, 3)).astype(np.float32)
    out = []
    for t in range(n):
        frame = base + rng.normal(0, 4, (h, w, 3))
        frame[h // 4 : h // 4 + 12, 4 + 2 * t : 16 + 2 * t] = (220, 200, 60)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def box(size: tuple[int, int], label: int, y: int, x: int, side: int) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    m[y : y + side, x : x + side] = label
    return m


A, B, C = (40, 56), (48, 64), (64, 80)  # A and B pad to the same 48 x 64; C does not


def videos() -> list[VideoInput]:
    """Different lengths, sizes and object counts; a late object, a correction, a complete
    correction, a video whose first seed is on frame 1."""
    return [
        VideoInput("two", frames(7, A, 0), {0: box(A, 1, 8, 4, 12) + box(A, 2, 24, 30, 10)}),
        VideoInput("late", frames(5, A, 1), {0: box(A, 3, 8, 4, 12), 2: box(A, 4, 22, 30, 10)}),
        VideoInput(
            "corrected", frames(9, C, 2), {1: box(C, 1, 16, 6, 14), 4: box(C, 1, 30, 40, 14)}
        ),
        VideoInput(
            "complete",
            frames(6, B, 3),
            {0: box(B, 1, 12, 4, 12) + box(B, 2, 30, 40, 10), 3: box(B, 1, 12, 10, 12)},
            complete_seeds=(3,),
        ),
        VideoInput("short", frames(4, A, 4), {0: box(A, 5, 6, 6, 16)}),
    ]


SCHEDULE = {"mem_every": 2, "max_memory_frames": 3}  # frames enter memory and get evicted


def alone(model: STM, inputs: list[VideoInput]) -> dict[tuple[str, int], object]:
    out = {}
    for v in inputs:
        results = propagate(model, v.frames, v.seeds, complete_seeds=v.complete_seeds, **SCHEDULE)
        for r in results:
            out[v.key, r.frame_index] = r
    return out


def together(model: STM, inputs: list[VideoInput], k: int) -> tuple[dict, list[VideoEnd], list]:
    results, ends, order = {}, [], []
    for event in propagate_videos(model, inputs, k, **SCHEDULE):
        order.append(event)
        if isinstance(event, VideoFrame):
            results[event.key, event.result.frame_index] = event.result
        else:
            ends.append(event)
    return results, ends, order


def assert_same(got: dict, expected: dict) -> float:
    """Labels and object ids equal, probabilities within the tolerance; the largest gap."""
    assert got.keys() == expected.keys()
    worst = 0.0
    for key, e in expected.items():
        g = got[key]
        assert g.object_ids == e.object_ids, key
        np.testing.assert_array_equal(g.labels, e.labels, err_msg=str(key))
        worst = max(worst, float(np.abs(g.probs - e.probs).max()))
    assert worst <= PROB_TOLERANCE
    return worst


@pytest.mark.parametrize("k", [2, 3, 8])
def test_videos_together_give_each_video_its_own_results(model, k):
    expected = alone(model, videos())
    got, ends, order = together(model, videos(), k)
    worst = assert_same(got, expected)
    print(f"videos_per_batch={k}: max |prob difference| {worst:.2e}")
    assert sorted((e.key, e.frames, e.error) for e in ends) == sorted(
        (v.key, len(v.frames), None) for v in videos()
    )
    for v in videos():  # per video: its frames in order, then its end
        mine = [e for e in order if e.key == v.key]
        assert [e.result.frame_index for e in mine[:-1]] == list(range(len(v.frames)))
        assert isinstance(mine[-1], VideoEnd)


def test_a_video_that_ends_makes_room_for_the_next_and_sizes_are_grouped(model, monkeypatch):
    batches: list[tuple[int, ...]] = []
    encode_query = model.encode_query

    def recording(frame: torch.Tensor):
        batches.append(tuple(frame.shape))
        return encode_query(frame)

    monkeypatch.setattr(model, "encode_query", recording)
    _, ends, order = together(model, videos(), 4)
    # Frame 0 has nothing to segment; on frame 1 the three videos that pad to 48 x 64 are
    # encoded together, "corrected" (64 x 80, seeded on frame 1) not yet.
    assert batches[0] == (3, 3, 48, 64)
    assert (1, 3, 64, 80) in batches  # its own group later, never padded to a common size
    assert {b[2:] for b in batches} == {(48, 64), (64, 80)}
    # "short" waits for a place: it joins when "late" (5 frames, the shortest) leaves.
    assert [e.key for e in ends][0] == "late"
    first_short = next(i for i, e in enumerate(order) if e.key == "short")
    assert first_short > next(i for i, e in enumerate(order) if isinstance(e, VideoEnd))


def failing(frames_: list[np.ndarray], at: int) -> Iterator[np.ndarray]:
    for t, frame in enumerate(frames_):
        if t == at:
            raise OSError(f"frame {t} is unreadable")
        yield frame


def test_a_failing_video_ends_alone_and_the_others_are_unchanged(model):
    good = videos()[:2]
    bad_size = frames(5, A, 9)
    bad_size[2] = np.zeros((*B, 3), np.uint8)
    seed = {0: box(A, 1, 8, 8, 10)}
    bad = [
        VideoInput("unreadable", failing(frames(6, A, 7), 3), seed),
        VideoInput("resized", bad_size, seed),
        VideoInput("beyond", frames(3, A, 8), {**seed, 5: box(A, 1, 8, 8, 10)}),
        VideoInput("unseeded", frames(3, A, 8), {}),
    ]
    got, ends, _ = together(model, [bad[0], good[0], *bad[1:], good[1]], 3)
    by_key = {e.key: e for e in ends}
    assert isinstance(by_key["unreadable"].error, OSError) and by_key["unreadable"].frames == 3
    assert isinstance(by_key["resized"].error, InputError) and by_key["resized"].frames == 2
    assert "differs from the video's" in str(by_key["resized"].error)
    assert isinstance(by_key["beyond"].error, InputError) and by_key["beyond"].frames == 3
    assert "seeds for frames [5]" in str(by_key["beyond"].error)
    assert isinstance(by_key["unseeded"].error, InputError) and by_key["unseeded"].frames == 0
    assert by_key["two"].error is None and by_key["late"].error is None
    expected = alone(model, videos()[:2])
    assert_same({k: v for k, v in got.items() if k[0] in ("two", "late")}, expected)
    unreadable = alone(model, [VideoInput("unreadable", frames(6, A, 7)[:3], seed)])
    assert_same({k: v for k, v in got.items() if k[0] == "unreadable"}, unreadable)


def test_step_sessions_needs_one_model_and_propagate_videos_a_batch_size(model):
    other = STM("resnet18").eval()
    plans = []
    sessions = [VideoSession(model), VideoSession(other)]
    for s in sessions:
        plans.append(s.begin(0, frames(1, A, 0)[0], box(A, 1, 4, 4, 8)))
    with pytest.raises(ValueError, match="share one model"):
        step_sessions(sessions, plans)
    with pytest.raises(ValueError, match="videos_per_batch"):
        next(propagate_videos(model, videos(), 0))


# --- the pipeline: label_shard with videos_per_batch ---------------------------------------


def write_video(root: Path, video_id: str, video: list[np.ndarray], seeds: dict) -> None:
    """A DAVIS folder (JPEG frames, palette PNG seeds) under ``root``."""
    folder = root / "JPEGImages" / "480p" / video_id
    masks = root / "Annotations" / "480p" / video_id
    folder.mkdir(parents=True)
    masks.mkdir(parents=True)
    for t, frame in enumerate(video):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=95)
    for t, labels in seeds.items():
        png = Image.fromarray(labels, mode="P")
        png.putpalette([0, 0, 0] + [255, 0, 0] * 3 + [0] * (256 - 4) * 3)
        png.save(masks / f"{t:05d}.png")


class Recorder(ShardEvents):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def video_started(self, task):
        self.calls.append(("started", task.video_id))

    def frames_done(self, task, n):
        self.calls.append(("frame", task.video_id))

    def video_finished(self, task, failed):
        self.calls.append(("finished", task.video_id, failed))


@pytest.fixture(scope="module")
def shard_corpus(tmp_path_factory) -> tuple[list, Path]:
    """Six videos in task order: sizes that share a batch, one larger one that is labeled
    downscaled, a late object, a correction, a corrupt frame mid-video."""
    root = tmp_path_factory.mktemp("batch-corpus") / "corpus"
    write_video(root, "a-two", frames(7, B, 0), {0: box(B, 1, 8, 4, 12) + box(B, 2, 28, 40, 10)})
    write_video(root, "b-late", frames(5, A, 1), {0: box(A, 1, 8, 4, 12), 2: box(A, 2, 22, 30, 10)})
    write_video(root, "c-bad", frames(6, B, 2), {0: box(B, 1, 8, 4, 12)})
    (root / "JPEGImages" / "480p" / "c-bad" / "00003.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    write_video(root, "d-large", frames(6, (64, 96), 3), {0: box((64, 96), 1, 16, 8, 16)})
    write_video(root, "e-fixed", frames(8, A, 4), {0: box(A, 1, 8, 4, 12) + box(A, 2, 24, 30, 8)})
    write_video(root, "f-short", frames(3, B, 5), {0: box(B, 3, 6, 6, 16)})
    found = discover(str(root))
    assert found.errors == [] and len(found.tasks) == 6
    tasks = sorted(found.tasks, key=lambda t: t.video_id)
    fix = box(A, 1, 20, 20, 12)  # a correction of object 1 on frame 4
    tasks[4] = dataclasses.replace(tasks[4], corrections=(RleSeed(4, 1, *A, encode(fix == 1)),))
    return tasks, root


def run_shard(model, tasks, out: Path, k: int) -> tuple[list[dict], list[dict], Recorder]:
    settings = LabelSettings(
        run_id="r1",
        checkpoint_id="test",
        started_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        mem_every=2,
        max_memory_frames=3,
        max_frame_side=80,
        videos_per_batch=k,
    )
    events = Recorder()
    summary = label_shard(model, "shard-00000", tasks, settings, str(out), StorageOptions(), events)
    assert summary.videos == 6 and summary.errors == 1
    masks = pq.read_table(next((out / "masks").rglob("*.parquet"))).to_pylist()
    errors = pq.read_table(next((out / "errors").rglob("*.parquet"))).to_pylist()
    return masks, errors, events


def _no_address(row: dict) -> dict:
    return {**row, "message": re.sub(r" at 0x[0-9a-f]+", "", row["message"])}


@pytest.mark.parametrize("k", [3, 8])
def test_label_shard_writes_the_rows_of_one_video_at_a_time(model, shard_corpus, tmp_path, k):
    tasks, _ = shard_corpus
    masks_1, errors_1, events_1 = run_shard(model, tasks, tmp_path / "one", 1)
    masks_k, errors_k, events_k = run_shard(model, tasks, tmp_path / "many", k)
    # PIL's message names a BytesIO by its address, which differs between any two runs.
    assert [_no_address(e) for e in errors_k] == [_no_address(e) for e in errors_1]
    assert [(e["video_id"], e["stage"], e["error_type"]) for e in errors_1] == [
        ("c-bad", "decode", "InputError")
    ]
    assert len(masks_k) == len(masks_1)
    worst = 0.0
    for a, b in zip(masks_1, masks_k, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=PROB_TOLERANCE)
        worst = max(worst, abs(a["score"] - b["score"]))
        assert {**a, "score": 0} == {**b, "score": 0}
    print(f"videos_per_batch={k}: max |score difference| {worst:.2e}")
    # The rows cover the corrected frame as a seed, and the downscaled video at native size.
    fixed = [r for r in masks_1 if r["video_id"] == "e-fixed" and r["frame_index"] == 4]
    assert [r["is_seed"] for r in fixed] == [True, False]
    assert {(r["height"], r["width"]) for r in masks_1 if r["video_id"] == "d-large"} == {(64, 96)}
    # Events: each video's own sequence as when alone; with k > 1 they interleave.
    for task in tasks:
        mine = [c for c in events_k.calls if c[1] == task.video_id]
        assert mine == [c for c in events_1.calls if c[1] == task.video_id]
    assert events_k.calls != events_1.calls


class Handle:
    """Stands for a Ray actor handle: ``handle.method.remote(...)`` calls the method now."""

    def __init__(self, target: object) -> None:
        self.target = target

    def __getattr__(self, name: str) -> object:
        return type("Method", (), {"remote": staticmethod(getattr(self.target, name))})


def replay(tasks: list[VideoTask], calls: list[tuple]) -> dict:
    """The tracker's snapshot after TrackerEvents saw ``calls`` (as :class:`Recorder` keeps
    them) of one shard of ``tasks``."""
    tracker = ProgressTracker(
        {"videos_total": len(tasks), "frames_total": sum(t.num_frames or 0 for t in tasks)}
    )
    events = TrackerEvents(Handle(tracker), "w", clock=lambda: 0.0)
    by_id = {t.video_id: t for t in tasks}
    events.shard_started("s")
    for call in calls:
        task = by_id[call[1]]
        if call[0] == "started":
            events.video_started(task)
        elif call[0] == "frame":
            events.frames_done(task, 1)
        else:
            events.video_finished(task, failed=call[2])
    events.shard_finished("s", tasks, skipped=False)
    return tracker.snapshot()


def test_tracker_counts_interleaved_videos_as_sequential_ones() -> None:
    tasks = [
        VideoTask("x", "frames", "u/x", frame_files=("0.jpg", "1.jpg")),
        VideoTask("y", "frames", "u/y", frame_files=("0.jpg", "1.jpg", "2.jpg")),
    ]
    one = [("started", "x"), ("frame", "x"), ("frame", "x"), ("finished", "x", False)]
    one += [("started", "y"), ("frame", "y"), ("finished", "y", True)]  # 2 frames never done
    interleaved = [one[0], one[4], one[1], one[5], one[2], one[6], one[3]]
    snap = replay(tasks, interleaved)
    assert snap == replay(tasks, one)
    assert (snap["frames"], snap["frames_total"], snap["videos"], snap["errors"]) == (3, 3, 2, 1)


def test_batching_refuses_per_video_fine_tuning() -> None:
    base = {"corpus_uri": "c", "output_uri": "o", "run_id": "r"}
    assert LabelJobConfig.model_validate(base).videos_per_batch == 1
    assert LabelJobConfig.model_validate({**base, "videos_per_batch": 4}).videos_per_batch == 4
    with pytest.raises(ValidationError, match="videos_per_batch 4 needs adaptation.steps 0"):
        LabelJobConfig.model_validate({**base, "videos_per_batch": 4, "adaptation": {"steps": 10}})
    with pytest.raises(ValidationError, match="videos_per_batch"):
        LabelJobConfig.model_validate({**base, "videos_per_batch": 0})
    started = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="adaptation off"):
        LabelSettings("r", "c", started, adaptation=Adaptation(steps=5), videos_per_batch=2)
    json.dumps(LabelJobConfig.model_validate(base).public_dump())  # still serialisable
