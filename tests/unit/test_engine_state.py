"""What the store knows about each video (pipeline.engine.state): which videos a nightly run
labels and why, and where each video's newest committed labels are.

Stores are written in ``tmp_path`` with :mod:`pipeline.ledger`, the way the corpus job writes
them: plan (with fingerprints) -> shards -> run record (with the checkpoint id) -> ``_SUCCESS``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from pipeline import ledger
from pipeline.corpus import VideoTask, fingerprint
from pipeline.engine.state import (
    VideoLabels,
    committed_runs,
    label_state,
    read_video_masks,
    videos_to_label,
)
from pipeline.rle import encode
from schemas.tables import ERRORS, MASKS, ErrorRow, MaskRow

T0 = dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.UTC)
PROMOTED = "sha256:" + "b" * 16
OLD = "sha256:" + "a" * 16


# --- videos_to_label ------------------------------------------------------------------------


def task(video_id: str, frames: int = 3, size: int = 300) -> VideoTask:
    return VideoTask(
        video_id=video_id,
        kind="frames",
        uri=f"/corpus/{video_id}",
        frame_files=tuple(f"{i:05d}.jpg" for i in range(frames)),
        size_bytes=size,
    )


def labels_of(
    t: VideoTask,
    *,
    checkpoint: str = PROMOTED,
    planned_at: dt.datetime = T0,
    fp: str | None = "same",
) -> VideoLabels:
    return VideoLabels(
        video_id=t.video_id,
        run_id="run-1",
        shard="shard-00000",
        committed_at=planned_at + dt.timedelta(hours=1),
        planned_at=planned_at,
        checkpoint_id=checkpoint,
        fingerprint=fingerprint(t) if fp == "same" else fp,
    )


def test_a_video_without_labels_is_new() -> None:
    assert videos_to_label([task("v")], {}, PROMOTED, {}, "changed") == {"v": "new"}


def test_a_video_whose_listing_changed_is_changed() -> None:
    before = task("v", frames=3)
    state = {"v": labels_of(before)}
    assert videos_to_label([task("v", frames=4)], state, PROMOTED, {}, "changed") == {
        "v": "changed"
    }
    assert videos_to_label([task("v", size=301)], state, PROMOTED, {}, "changed") == {
        "v": "changed"
    }


def test_fingerprint_depends_on_frames_size_and_seeds_only() -> None:
    assert fingerprint(task("v")) == fingerprint(task("v"))
    assert fingerprint(task("v")) != fingerprint(task("v", frames=4))
    assert fingerprint(task("v")) != fingerprint(task("v", size=1))


def test_a_video_planned_without_a_fingerprint_is_not_changed() -> None:
    state = {"v": labels_of(task("v"), fp=None)}
    assert videos_to_label([task("v", frames=9)], state, PROMOTED, {}, "changed") == {}


def test_a_correction_newer_than_the_labels_plan_makes_it_corrected() -> None:
    t = task("v")
    state = {"v": labels_of(t, planned_at=T0)}
    newer = {"v": T0 + dt.timedelta(minutes=1)}
    older = {"v": T0 - dt.timedelta(minutes=1)}
    assert videos_to_label([t], state, PROMOTED, newer, "changed") == {"v": "corrected"}
    assert videos_to_label([t], state, PROMOTED, older, "changed") == {}


def test_labels_of_another_checkpoint_are_stale_only_with_relabel_stale() -> None:
    t = task("v")
    state = {"v": labels_of(t, checkpoint=OLD)}
    assert videos_to_label([t], state, PROMOTED, {}, "stale") == {"v": "stale"}
    assert videos_to_label([t], state, PROMOTED, {}, "changed") == {}


def test_current_videos_are_left_out_and_each_video_gets_one_reason() -> None:
    tasks = [task("current"), task("new"), task("changed"), task("stale"), task("corrected")]
    state = {
        "current": labels_of(task("current")),
        "changed": labels_of(task("changed"), checkpoint=OLD, fp="different"),
        "stale": labels_of(task("stale"), checkpoint=OLD),
        "corrected": labels_of(task("corrected"), checkpoint=OLD),
    }
    corrected_at = {"corrected": T0 + dt.timedelta(days=1), "current": T0 - dt.timedelta(days=1)}
    todo = videos_to_label(tasks, state, PROMOTED, corrected_at, "stale")
    assert todo == {"new": "new", "changed": "changed", "stale": "stale", "corrected": "corrected"}


# --- label_state, committed_runs, read_video_masks ------------------------------------------

H, W = 4, 5


def mask_rows(run_id: str, video: str, frames: int = 2) -> list[MaskRow]:
    mask = np.zeros((H, W), bool)
    mask[1:3, 1:4] = True
    return [
        MaskRow(
            run_id=run_id,
            video_id=video,
            frame_index=f,
            frame_name=f"{f:05d}",
            object_id=1,
            height=H,
            width=W,
            rle=encode(mask),
            area=6,
            bbox=(1.0, 1.0, 3.0, 2.0),
            score=0.9,
            is_seed=f == 0,
            checkpoint_id="ck",
        )
        for f in range(frames)
    ]


def write_run(
    store: str,
    run_id: str,
    videos: Iterable[str],
    *,
    checkpoint: str,
    failed: Iterable[str] = (),
    commit: bool = True,
    fingerprints: dict[str, str] | None = None,
) -> ledger.RunPlan:
    videos, failed = sorted(videos), set(failed)
    fps = {v: f"fp-{run_id}-{v}" for v in videos} if fingerprints is None else fingerprints
    plan = ledger.save_plan(store, ledger.make_plan(run_id, videos, 2, fingerprints=fps))
    for shard in plan.shards:
        rows = [r for v in shard.video_ids if v not in failed for r in mask_rows(run_id, v)]
        errors = [
            ErrorRow(run_id, v, "label", "RuntimeError", "boom", T0)
            for v in shard.video_ids
            if v in failed
        ]
        ledger.write_shard(
            store,
            run_id,
            shard.name,
            MASKS.table(rows),
            ERRORS.table(errors) if errors else ERRORS.empty(),
        )
    if commit:
        ledger.write_run_record(store, run_id, {"checkpoint_id": checkpoint, "status": "ok"})
        ledger.mark_success(store, run_id)
    return plan


@pytest.fixture()
def store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


def test_committed_runs_lists_only_runs_with_a_success_marker(store: str) -> None:
    write_run(store, "run-a", ["v1"], checkpoint="ck-a")
    write_run(store, "run-b", ["v1"], checkpoint="ck-b", commit=False)
    assert committed_runs(store, None) == ["run-a"]


def test_an_empty_store_has_no_runs_and_no_labels(store: str) -> None:
    assert committed_runs(store, None) == []
    assert label_state(store, None) == {}
    assert read_video_masks(store, [], None).num_rows == 0


def test_the_newest_committed_run_wins_per_video(store: str) -> None:
    # committed in this order; the run ids sort the other way round
    first = write_run(store, "z-first", ["v1", "v2", "v3"], checkpoint="ck-1")
    second = write_run(store, "a-second", ["v1"], checkpoint="ck-2")
    state = label_state(store, None)
    assert sorted(state) == ["v1", "v2", "v3"]
    v1, v2 = state["v1"], state["v2"]
    assert (v1.run_id, v1.checkpoint_id, v1.shard) == ("a-second", "ck-2", "shard-00000")
    assert v1.planned_at == second.created_at
    assert v1.fingerprint == "fp-a-second-v1"
    assert v1.committed_at == ledger.read_success(store, "a-second").committed_at
    assert (v2.run_id, v2.checkpoint_id, v2.shard) == ("z-first", "ck-1", "shard-00000")
    assert v2.planned_at == first.created_at
    assert state["v3"].shard == "shard-00001"  # two videos per shard


def test_a_video_with_an_error_in_the_newest_run_keeps_its_older_labels(store: str) -> None:
    write_run(store, "run-1", ["v1", "v2"], checkpoint="ck-1")
    write_run(store, "run-2", ["v1", "v2"], checkpoint="ck-2", failed=["v2"])
    state = label_state(store, None)
    assert state["v1"].run_id == "run-2"
    assert (state["v2"].run_id, state["v2"].checkpoint_id) == ("run-1", "ck-1")


def test_a_video_that_only_ever_failed_has_no_labels(store: str) -> None:
    write_run(store, "run-1", ["v1", "v2"], checkpoint="ck-1", failed=["v2"])
    assert sorted(label_state(store, None)) == ["v1"]


def test_an_uncommitted_run_is_ignored(store: str) -> None:
    write_run(store, "run-1", ["v1"], checkpoint="ck-1")
    write_run(store, "run-2", ["v1", "v9"], checkpoint="ck-2", commit=False)
    state = label_state(store, None)
    assert sorted(state) == ["v1"]
    assert state["v1"].run_id == "run-1"


def test_a_plan_without_fingerprints_gives_none(store: str) -> None:
    write_run(store, "run-1", ["v1"], checkpoint="ck-1", fingerprints={})
    assert label_state(store, None)["v1"].fingerprint is None


def test_read_video_masks_reads_each_videos_newest_rows_only(store: str) -> None:
    write_run(store, "run-1", ["v1", "v2", "v3"], checkpoint="ck-1")
    write_run(store, "run-2", ["v1", "v3"], checkpoint="ck-2")
    state = label_state(store, None)
    table = read_video_masks(store, [state["v1"], state["v2"]], None)
    assert table.schema.equals(MASKS.schema)
    rows = list(
        zip(
            table["video_id"].to_pylist(),
            table["frame_index"].to_pylist(),
            table["run_id"].to_pylist(),
            strict=True,
        )
    )
    assert rows == [("v1", 0, "run-2"), ("v1", 1, "run-2"), ("v2", 0, "run-1"), ("v2", 1, "run-1")]
