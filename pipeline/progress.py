"""What a person sees of a labeling run: what discovery found, progress while it runs, a summary
at the end, and the line an interrupted run leaves.

The text is made by pure functions of plain dicts (a progress snapshot, a ``RunSummary`` as
``asdict`` or the run record gives it), so tests need no clock and no Ray. :class:`ProgressDisplay`
shows the snapshots the job hands its progress callback: a rich progress bar when stderr is a
terminal, otherwise plain ``progress:`` lines (the first, then one every ``every_seconds``, and
the last), which is what a log file or ``ray job submit`` shows.

Frame totals: a frame folder's frame count is known from discovery, a video file's only once a
worker opens it. The total counts the frames known so far and grows as video files are opened;
while some are not yet, the line says "of at least N frames", and the time left assumes each
unopened file is as long as the average video already counted.

A progress snapshot (``pipeline.label_actor.ProgressTracker.snapshot`` plus what the driver adds)
holds ``shards``/``shards_total``, ``videos``/``videos_total``, ``frames``/``frames_total``,
``videos_unprobed``, ``errors``, ``adapting`` ([video ordinal, video id, step, steps] per worker
fine-tuning now), ``frames_per_second``, ``elapsed_seconds`` and ``finished`` (the last one).
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .corpus import DiscoveryError, VideoTask

MAX_ERROR_ROWS = 20  # errors rows a summary shows; it counts the rest
MESSAGE_WIDTH = 110  # characters of an error message a summary shows
PLAIN_EVERY_SECONDS = 10.0


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 error``, ``2 errors``, ``1 video file``, ``3 frame folders``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m`` (rounded down)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def estimated_frames(snapshot: Mapping[str, Any]) -> float | None:
    """The run's frame total: the frames known, plus, for each video file not opened yet, the
    average frames of the videos counted; None while no video's length is known."""
    total, unprobed = snapshot["frames_total"], snapshot["videos_unprobed"]
    if not unprobed:
        return float(total)
    known = snapshot["videos_total"] - unprobed
    if known <= 0 or total <= 0:
        return None
    return total + unprobed * total / known


def eta_seconds(snapshot: Mapping[str, Any]) -> float | None:
    """Seconds left at the run's frame rate so far, or None before the first frame (or while
    no video's length is known)."""
    rate, total = snapshot["frames_per_second"], estimated_frames(snapshot)
    if rate <= 0 or snapshot["frames"] <= 0 or total is None:
        return None
    return max(0.0, total - snapshot["frames"]) / rate


def format_progress(snapshot: Mapping[str, Any]) -> str:
    """One line: ``1/3 shards, 2/5 videos, 120/300 frames, 4.20 frames/s, 1 error, about 42s
    left``, plus what each fine-tuning worker is at (``adapting video 2/5 (bear): step
    40/80``). With video files not opened yet: ``120 of at least 300 frames (2 video files not
    opened yet)``."""
    frames, total, unprobed = (
        snapshot["frames"],
        snapshot["frames_total"],
        snapshot["videos_unprobed"],
    )
    if unprobed:
        frames_text = (
            f"{frames} of at least {total} frames ({plural(unprobed, 'video file')} not opened yet)"
        )
    else:
        frames_text = f"{frames}/{total} frames"
    parts = [
        f"{snapshot['shards']}/{snapshot['shards_total']} shards",
        f"{snapshot['videos']}/{snapshot['videos_total']} videos",
        frames_text,
        f"{snapshot['frames_per_second']:.2f} frames/s",
        plural(snapshot["errors"], "error"),
    ]
    if snapshot.get("finished"):
        parts.append(f"done in {format_duration(snapshot.get('elapsed_seconds', 0.0))}")
    else:
        eta = eta_seconds(snapshot)
        parts.append("time left unknown" if eta is None else f"about {format_duration(eta)} left")
    line = ", ".join(parts)
    for ordinal, video_id, step, steps in snapshot.get("adapting", ()):
        line += (
            f"; adapting video {ordinal}/{snapshot['videos_total']} ({video_id}): "
            f"step {step}/{steps}"
        )
    return line


def describe_discovery(tasks: Sequence[VideoTask], errors: Sequence[DiscoveryError]) -> str:
    """``3 videos: 2 video files, 1 frame folder; 1 problem (no_seeds: 1)``."""
    kinds = Counter(t.kind for t in tasks)
    text = (
        f"{plural(len(tasks), 'video')}: {plural(kinds['file'], 'video file')}, "
        f"{plural(kinds['frames'], 'frame folder')}"
    )
    if not errors:
        return text + "; no problems"
    codes = Counter(e.error_type for e in errors)
    listed = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items()))
    return f"{text}; {plural(len(errors), 'problem')} ({listed}; see the errors table)"


def _table(rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns, two spaces apart (the last column as it is)."""
    rows = [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]) for r in rows
    ]


def _shorten(text: str, width: int = MESSAGE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_summary(summary: Mapping[str, Any]) -> str:
    """What a run did, for a person: counts, frames/s, wall time, and the errors table's rows
    (at most ``MAX_ERROR_ROWS``, then how many more). ``summary``: a ``RunSummary`` as
    ``dataclasses.asdict`` gives it, or the run record."""
    run, status = summary["run_id"], summary["status"]
    lines = [f"run {run} {status} in {format_duration(summary.get('wall_seconds', 0.0))}"]
    videos = [
        plural(summary.get("videos_labeled", 0), "video") + " labeled",
        f"{summary.get('videos_failed', 0)} failed",
    ]
    if summary.get("videos_skipped"):
        videos.append(f"{summary['videos_skipped']} skipped as already done by an earlier attempt")
    lines.append("  videos: " + ", ".join(videos))
    frames = f"  frames: {summary.get('frames_labeled', 0)} labeled"
    if summary.get("frames", 0) != summary.get("frames_labeled", 0):
        frames += f" ({summary.get('frames', 0)} in the run)"
    lines.append(f"{frames}, {summary.get('frames_per_second', 0.0):.2f} frames/s overall")
    shards = f"  shards: {summary.get('shards', 0)}"
    if summary.get("shards_skipped"):
        shards += f" ({summary['shards_skipped']} finished by an earlier attempt)"
    lines.append(f"{shards}; output in {summary['output_uri']}")
    shown = list(summary.get("error_rows") or [])
    total = int(summary.get("errors", 0))
    if total:
        lines.append(f"  errors: {plural(total, 'row')} (errors/run_id={run}/ in the output)")
        if shown:
            header = ("video", "stage", "error", "message")
            body = [
                (
                    r.get("video_id") or "-",
                    r.get("stage") or "",
                    r.get("error_type") or "",
                    _shorten(r.get("message") or ""),
                )
                for r in shown
            ]
            lines += ["    " + line for line in _table([header, *body])]
        if total > len(shown):
            lines.append(f"    ... and {total - len(shown)} more")
    else:
        lines.append("  errors: none")
    return "\n".join(lines)


def command_line(argv: Sequence[str]) -> str:
    """The command as typed again, from ``sys.orig_argv``: ``python jobs/label_corpus.py
    --config job.yaml``; an installed script (``.../bin/stm-label label ...``, which Python
    sees as ``python .../bin/stm-label``) by its name."""
    args = list(argv)
    if len(args) >= 2 and not args[1].startswith("-") and Path(args[1]).suffix != ".py":
        script = Path(args[1])
        if script.parent.name == "bin":  # a console script: stm-label
            args = [script.name, *args[2:]]
    return shlex.join(args)


def interrupted_line(
    run_id: str, output_uri: str, committed: tuple[int, int | None] | None, command: str
) -> str:
    """The one line a Ctrl-C leaves: what is committed and the command that resumes.
    ``committed``: (shards finished, shards planned; None before the run's plan was saved), or
    None when the output could not be read."""
    if committed is None:
        done = f"could not read what is committed in {output_uri}"
    elif committed[1] is None:
        done = "nothing committed yet (the run had not planned its shards)"
    else:
        done = f"{committed[0]} of {plural(committed[1], 'shard')} committed to {output_uri}"
    return f"interrupted: {done}; the same command resumes run {run_id}: {command}"


class ProgressDisplay:
    """Shows progress snapshots: a rich bar on a terminal, plain lines elsewhere.

    Plain lines: the first snapshot, then one every ``every_seconds``, and the last
    (``finished``). Use as a context manager (or call :meth:`close`) so a bar is taken down even
    when the run stops early.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        tty: bool | None = None,
        every_seconds: float = PLAIN_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = tty
        self.every_seconds, self.clock = every_seconds, clock
        self._last: float | None = None
        self._bar: Any = None
        self._task: Any = None
        self._log_streams: list[tuple[logging.StreamHandler, Any]] = []

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr  # looked up late: tests and Ray swap sys.stderr

    @property
    def tty(self) -> bool:
        if self._tty is None:
            isatty = getattr(self.stream, "isatty", None)
            self._tty = bool(isatty and isatty())
        return self._tty

    def __call__(self, snapshot: Mapping[str, Any]) -> None:
        if self.tty:
            self._draw(snapshot)
        else:
            now = self.clock()
            if (
                self._last is None
                or now - self._last >= self.every_seconds
                or snapshot.get("finished")
            ):
                self._last = now
                print(f"progress: {format_progress(snapshot)}", file=self.stream, flush=True)
        if snapshot.get("finished"):
            self.close()

    def _draw(self, snapshot: Mapping[str, Any]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn
        from rich.table import Column

        if self._bar is None:
            self._bar = Progress(
                TextColumn("labeling"),
                BarColumn(bar_width=24),
                # the line wraps on a narrow terminal instead of being cut
                TextColumn(
                    "{task.fields[info]}", markup=False, table_column=Column(overflow="fold")
                ),
                console=Console(file=self.stream),  # prints meanwhile go above the bar
            )
            stderr = sys.stderr
            self._bar.start()  # on a terminal, sys.stderr now writes above the bar ...
            self._task = self._bar.add_task("labeling", total=None, info="")
            self._log_streams = _redirect_log_handlers(stderr, sys.stderr)  # ... logs too
        total = estimated_frames(snapshot)
        self._bar.update(
            self._task,
            completed=snapshot["frames"],
            total=None if total is None else max(total, snapshot["frames"]),
            info=format_progress(snapshot),
        )

    def close(self) -> None:
        if self._bar is not None:
            for handler, stream in self._log_streams:
                handler.setStream(stream)
            self._log_streams = []
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _redirect_log_handlers(
    stream: TextIO, to: TextIO
) -> list[tuple[logging.StreamHandler, TextIO]]:
    """Point the root logger's handlers that write to ``stream`` at ``to`` (nothing when they
    are the same); returns each handler with its stream, to put back. (A handler keeps the
    stream it was made with, so its lines would otherwise cut through the bar.)"""
    moved = []
    for handler in logging.getLogger().handlers if to is not stream else ():
        if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
            handler.setStream(to)
            moved.append((handler, stream))
    return moved


_plain = ProgressDisplay(tty=False)


def print_progress(snapshot: Mapping[str, Any]) -> None:
    """Plain progress lines on stderr (the nightly engine's labeling step)."""
    _plain(snapshot)
