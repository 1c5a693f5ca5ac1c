"""What a person sees of a labeling run (pipeline.progress) and the counts behind it
(pipeline.label_actor's ProgressTracker and TrackerEvents), without Ray and without a clock."""

from __future__ import annotations

import io
from typing import Any

import pytest

from pipeline.corpus import DiscoveryError, VideoTask
from pipeline.label_actor import ProgressTracker, TrackerEvents
from pipeline.progress import (
    MAX_ERROR_ROWS,
    ProgressDisplay,
    command_line,
    describe_discovery,
    estimated_frames,
    eta_seconds,
    format_duration,
    format_progress,
    format_summary,
    interrupted_line,
)


def snapshot(**changes: Any) -> dict[str, Any]:
    snap = {
        "shards": 1,
        "shards_total": 3,
        "videos": 2,
        "videos_total": 5,
        "videos_unprobed": 0,
        "frames": 120,
        "frames_total": 300,
        "errors": 1,
        "adapting": [],
        "frames_per_second": 4.0,
        "elapsed_seconds": 30.0,
        "finished": False,
    }
    return snap | changes


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.9, "42s"), (60, "1m00s"), (185, "3m05s"), (3725, "1h02m"), (-3, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_eta_counts_the_frames_left_at_the_rate_so_far() -> None:
    assert eta_seconds(snapshot()) == pytest.approx((300 - 120) / 4.0)
    assert eta_seconds(snapshot(frames=0)) is None  # no rate yet
    assert eta_seconds(snapshot(frames_per_second=0.0)) is None
    assert eta_seconds(snapshot(frames=310)) == 0.0  # never negative


def test_unopened_video_files_count_as_long_as_the_average_video() -> None:
    # 3 of 5 videos known with 300 frames: the 2 unopened files count 100 each
    snap = snapshot(videos_unprobed=2)
    assert estimated_frames(snap) == pytest.approx(500)
    assert eta_seconds(snap) == pytest.approx((500 - 120) / 4.0)
    # nothing known yet (only video files, none opened): no estimate
    assert estimated_frames(snapshot(videos_unprobed=5, frames_total=0)) is None
    assert eta_seconds(snapshot(videos_unprobed=5, frames_total=0)) is None


def test_progress_line() -> None:
    assert format_progress(snapshot()) == (
        "1/3 shards, 2/5 videos, 120/300 frames, 4.00 frames/s, 1 error, about 45s left"
    )
    unprobed = format_progress(snapshot(videos_unprobed=2, errors=0))
    assert "120 of at least 300 frames (2 video files not opened yet)" in unprobed
    assert "0 errors" in unprobed and "about 1m35s left" in unprobed
    assert format_progress(snapshot(frames=0)).endswith("time left unknown")
    done = format_progress(snapshot(finished=True, elapsed_seconds=75))
    assert done.endswith("done in 1m15s") and "left" not in done


def test_progress_line_shows_adaptation_steps() -> None:
    line = format_progress(snapshot(frames=0, adapting=[[2, "bear", 40, 80], [3, "cat", 1, 80]]))
    assert line.endswith(
        "; adapting video 2/5 (bear): step 40/80; adapting video 3/5 (cat): step 1/80"
    )


def test_describe_discovery() -> None:
    tasks = [
        VideoTask("a.mp4", "file", "s3://b/a.mp4"),
        VideoTask("b.mp4", "file", "s3://b/b.mp4"),
        VideoTask("swan", "frames", "s3://b/swan", frame_files=("00000.jpg",)),
    ]
    problems = [
        DiscoveryError("noseeds", "seed", "no_seeds", "no seeds"),
        DiscoveryError("other", "seed", "no_seeds", "no seeds"),
        DiscoveryError("e.mp4", "discover", "empty_file", "empty"),
    ]
    assert describe_discovery(tasks, problems[:1]) == (
        "3 videos: 2 video files, 1 frame folder; 1 problem (no_seeds: 1; see the errors table)"
    )
    assert describe_discovery(tasks[2:], problems) == (
        "1 video: 0 video files, 1 frame folder; 3 problems (empty_file: 1, no_seeds: 2; "
        "see the errors table)"
    )
    assert (
        describe_discovery(tasks[:1], []) == "1 video: 1 video file, 0 frame folders; no problems"
    )


def summary(**changes: Any) -> dict[str, Any]:
    out = {
        "run_id": "r1",
        "status": "succeeded",
        "output_uri": "s3://b/out",
        "videos": 4,
        "frames": 60,
        "errors": 1,
        "shards": 3,
        "shards_skipped": 1,
        "wall_seconds": 72.0,
        "frames_per_second": 1.25,
        "videos_labeled": 2,
        "videos_failed": 1,
        "videos_skipped": 2,
        "frames_labeled": 40,
        "error_rows": [
            {
                "video_id": "noseeds",
                "stage": "seed",
                "error_type": "no_seeds",
                "message": "s3://b/c/noseeds: no seeds\n for it",
            }
        ],
    }
    return out | changes


def test_summary_gives_counts_rate_time_and_the_errors_rows() -> None:
    text = format_summary(summary())
    assert text.splitlines() == [
        "run r1 succeeded in 1m12s",
        "  videos: 2 videos labeled, 1 failed, 2 skipped as already done by an earlier attempt",
        "  frames: 40 labeled (60 in the run), 1.25 frames/s overall",
        "  shards: 3 (1 finished by an earlier attempt); output in s3://b/out",
        "  errors: 1 row (errors/run_id=r1/ in the output)",
        "    video    stage  error     message",
        "    noseeds  seed   no_seeds  s3://b/c/noseeds: no seeds for it",
    ]
    clean = format_summary(summary(errors=0, error_rows=[], videos_skipped=0, frames=40))
    assert "errors: none" in clean and "skipped" not in clean and "in the run" not in clean


def test_summary_shows_at_most_the_first_rows_and_counts_the_rest() -> None:
    rows = [
        {"video_id": f"v{i:02d}", "stage": "read", "error_type": "InputError", "message": "x" * 500}
        for i in range(MAX_ERROR_ROWS)
    ]
    rows[0]["video_id"] = None  # a problem of no one video (an unreadable seed source)
    text = format_summary(summary(errors=MAX_ERROR_ROWS + 7, error_rows=rows))
    lines = text.splitlines()
    assert lines[-1] == "    ... and 7 more"
    assert sum(line.startswith(("    v0", "    v1")) for line in lines) == MAX_ERROR_ROWS - 1
    assert any(line.startswith("    -  ") for line in lines)
    assert all(len(line) < 200 for line in lines)  # long messages are cut


def test_a_failed_run_summary_from_an_old_record() -> None:
    """A run record written before the per-attempt counts existed still renders."""
    record = {"run_id": "r0", "status": "failed", "output_uri": "out", "errors": 1}
    text = format_summary(record)
    assert text.startswith("run r0 failed in 0s") and "... and 1 more" in text


def test_command_line_is_the_command_as_typed() -> None:
    assert (
        command_line(["python", "jobs/label_corpus.py", "--config", "my job.yaml"])
        == "python jobs/label_corpus.py --config 'my job.yaml'"
    )
    assert (
        command_line(["/v/.venv/bin/python", "/v/.venv/bin/stm-label", "label", "--config", "j"])
        == "stm-label label --config j"
    )
    assert command_line(["python", "-m", "jobs.label_corpus"]) == "python -m jobs.label_corpus"


def test_interrupted_line() -> None:
    cmd = "stm-label label --config job.yaml"
    assert interrupted_line("r1", "s3://b/out", (2, 5), cmd) == (
        "interrupted: 2 of 5 shards committed to s3://b/out; the same command resumes run r1: "
        "stm-label label --config job.yaml"
    )
    assert "nothing committed yet" in interrupted_line("r1", "o", (0, None), cmd)
    assert "could not read what is committed in o" in interrupted_line("r1", "o", None, cmd)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_display_prints_the_first_then_every_period_and_the_last() -> None:
    out, clock = io.StringIO(), FakeClock()
    display = ProgressDisplay(out, tty=False, every_seconds=10.0, clock=clock)
    for t, frames in [(0, 10), (5, 20), (10.5, 30), (12, 40)]:
        clock.now = t
        display(snapshot(frames=frames))
    clock.now = 13
    display(snapshot(frames=50, finished=True))
    lines = out.getvalue().splitlines()
    assert [line.split(", ")[2] for line in lines] == [
        "10/300 frames",
        "30/300 frames",
        "50/300 frames",
    ]
    assert all(line.startswith("progress: ") for line in lines)


def test_terminal_display_draws_a_bar_and_takes_it_down() -> None:
    out = io.StringIO()
    with ProgressDisplay(out, tty=True) as display:
        display(snapshot())
        display(snapshot(frames=300, videos=5, finished=True))
        assert display._bar is None  # stopped by the last snapshot
    assert "labeling" in out.getvalue() and "300/300 frames" in out.getvalue()


def test_log_lines_go_above_the_bar_while_it_is_shown(monkeypatch) -> None:
    """Rich sends what is written to sys.stderr above a bar on a terminal; a log handler holds
    the stream it was made with, so it is pointed at the new sys.stderr until the bar is down."""
    import logging
    import sys

    from pipeline.progress import _redirect_log_handlers

    before, proxy = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(before)
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler, logging.NullHandler()])
    moved = _redirect_log_handlers(before, proxy)
    assert handler.stream is proxy and moved == [(handler, before)]
    assert _redirect_log_handlers(sys.stderr, sys.stderr) == []


# --- the counts: ProgressTracker fed by TrackerEvents -------------------------------------


class Handle:
    """Stands for a Ray actor handle: ``handle.method.remote(...)`` calls the method now."""

    def __init__(self, target: object) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)
        return type("Method", (), {"remote": staticmethod(method)})


FOLDER = VideoTask("swan", "frames", "u/swan", frame_files=tuple(f"{i}.jpg" for i in range(4)))
FILE = VideoTask("a.mp4", "file", "u/a.mp4")
TOTALS = {
    "shards": 1,
    "shards_total": 3,
    "videos_total": 2,
    "frames_total": 4,
    "videos_unprobed": 1,
}


def label(events: TrackerEvents, task: VideoTask, frames: int, fail_after: int | None = None):
    events.video_started(task)
    events.video_probed(task, frames)
    for _ in range(frames if fail_after is None else fail_after):
        events.frames_done(task, 1)
    events.video_finished(task, failed=fail_after is not None)


def test_tracker_counts_frames_as_video_files_are_opened_and_failures_leave_the_total() -> None:
    tracker = ProgressTracker(TOTALS)
    events = TrackerEvents(Handle(tracker), "w1", clock=FakeClock())
    assert tracker.snapshot() | {"adapting": []} == {
        "shards": 1,
        "shards_total": 3,
        "videos": 0,
        "videos_started": 0,
        "videos_total": 2,
        "videos_unprobed": 1,
        "frames": 0,
        "frames_total": 4,
        "errors": 0,
        "adapting": [],
    }
    events.shard_started("shard-00001")
    label(events, FILE, 25)
    snap = tracker.snapshot()
    assert (snap["frames"], snap["frames_total"], snap["videos_unprobed"]) == (25, 29, 0)
    label(events, FOLDER, 4, fail_after=1)  # 3 frames never labeled
    events.shard_finished("shard-00001", [FILE, FOLDER], skipped=False)
    snap = tracker.snapshot()
    assert (snap["frames"], snap["frames_total"]) == (26, 26)
    assert (snap["videos"], snap["errors"], snap["shards"]) == (2, 1, 2)


def test_frames_are_sent_in_batches() -> None:
    tracker, clock = ProgressTracker(TOTALS), FakeClock()
    events = TrackerEvents(Handle(tracker), "w1", clock=clock)
    events.shard_started("s")
    events.video_started(FOLDER)
    for _ in range(9):
        events.frames_done(FOLDER, 1)
    assert tracker.snapshot()["frames"] == 0
    events.frames_done(FOLDER, 1)  # the 10th
    assert tracker.snapshot()["frames"] == 10
    events.frames_done(FOLDER, 1)
    clock.now = 2.5  # or after a couple of seconds
    events.frames_done(FOLDER, 1)
    assert tracker.snapshot()["frames"] == 12


def test_a_redone_shard_replaces_its_dead_attempts_counts() -> None:
    tracker = ProgressTracker(TOTALS)
    first = TrackerEvents(Handle(tracker), "w1", clock=FakeClock())
    first.shard_started("s1")
    label(first, FILE, 25)
    first.video_started(FOLDER)  # the actor dies here
    second = TrackerEvents(Handle(tracker), "w1", clock=FakeClock())
    second.shard_started("s1")
    label(second, FILE, 25)
    label(second, FOLDER, 4)
    second.shard_finished("s1", [FILE, FOLDER], skipped=False)
    snap = tracker.snapshot()
    assert (snap["frames"], snap["frames_total"], snap["videos"], snap["shards"]) == (29, 29, 2, 2)


def test_a_shard_found_finished_counts_as_done() -> None:
    tracker = ProgressTracker(TOTALS)
    events = TrackerEvents(Handle(tracker), "w1", clock=FakeClock())
    events.shard_finished("s1", [FILE, FOLDER], skipped=True)
    snap = tracker.snapshot()
    assert (snap["videos"], snap["frames_total"], snap["videos_unprobed"]) == (2, 0, 0)
    assert snap["shards"] == 2


def test_adaptation_steps_show_until_the_last() -> None:
    tracker, clock = ProgressTracker(TOTALS), FakeClock()
    events = TrackerEvents(Handle(tracker), "w1", clock=clock)
    events.shard_started("s")
    events.video_started(FOLDER)
    events.adapt_step(FOLDER, 1, 80)
    assert tracker.snapshot()["adapting"] == [[1, "swan", 1, 80]]
    clock.now = 1.0
    events.adapt_step(FOLDER, 2, 80)  # too soon: not sent
    clock.now = 3.0
    events.adapt_step(FOLDER, 40, 80)
    assert tracker.snapshot()["adapting"] == [[1, "swan", 40, 80]]
    events.adapt_step(FOLDER, 80, 80)
    assert tracker.snapshot()["adapting"] == []
    events.video_started(FILE)
    events.adapt_step(FILE, 1, 80)
    events.video_finished(FILE, failed=True)  # failed while adapting: cleared
    assert tracker.snapshot()["adapting"] == []
