"""What the store knows about each video: its newest committed labels, and whether they are
still good enough or the video must be labeled again.

A video's labels are those of the newest committed labeling run (by commit time) that planned
it and did not record an error for it. The run's plan holds the video's fingerprint at the time
(:func:`pipeline.corpus.fingerprint`) and the run record the checkpoint that labeled it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import ledger, table_io
from pipeline.corpus import VideoTask, fingerprint
from schemas.common import StorageOptions
from schemas.tables import MASKS

log = logging.getLogger(__name__)

REASONS = ("new", "changed", "corrected", "stale")


@dataclass(frozen=True)
class VideoLabels:
    """Where one video's newest labels are."""

    video_id: str
    run_id: str
    shard: str
    committed_at: dt.datetime
    planned_at: dt.datetime
    checkpoint_id: str
    fingerprint: str | None  # None for runs planned before fingerprints were recorded


def committed_runs(store_uri: str, options: StorageOptions | None) -> list[str]:
    """Ids of the committed labeling runs in the store."""
    files = table_io.list_files(f"{store_uri.rstrip('/')}/runs", options, include_hidden=True)
    marker = "/" + ledger.SUCCESS_NAME
    return sorted(f.removesuffix(marker).rsplit("/", 1)[-1] for f in files if f.endswith(marker))


def label_state(store_uri: str, options: StorageOptions | None) -> dict[str, VideoLabels]:
    """Video id -> its newest committed labels (see the module docstring)."""
    runs = []
    for run_id in committed_runs(store_uri, options):
        marker = ledger.read_success(store_uri, run_id, options)
        plan = ledger.load_plan(store_uri, run_id, options)
        if marker is None or plan is None:
            continue
        layout = ledger.RunLayout(store_uri, run_id)
        record = table_io.read_json(layout.record_uri, options)
        runs.append((marker.committed_at, run_id, plan, record.get("checkpoint_id", "")))
    state: dict[str, VideoLabels] = {}
    for committed_at, run_id, plan, checkpoint_id in sorted(runs, key=lambda r: r[:2]):
        failed = _failed_videos(store_uri, run_id, options)
        for shard in plan.shards:
            for video in shard.video_ids:
                if video in failed:
                    continue
                state[video] = VideoLabels(
                    video_id=video,
                    run_id=run_id,
                    shard=shard.name,
                    committed_at=committed_at,
                    planned_at=plan.created_at,
                    checkpoint_id=checkpoint_id,
                    fingerprint=plan.fingerprints.get(video),
                )
    return state


def _failed_videos(store_uri: str, run_id: str, options: StorageOptions | None) -> set[str]:
    folder = ledger.RunLayout(store_uri, run_id).errors_dir
    failed: set[str] = set()
    for uri in table_io.list_files(folder, options, suffix=".parquet"):
        column = table_io.read_table(uri, options, columns=["video_id"])["video_id"]
        failed.update(v for v in column.to_pylist() if v is not None)
    return failed


def videos_to_label(
    tasks: Iterable[VideoTask],
    state: Mapping[str, VideoLabels],
    promoted_id: str,
    corrected_at: Mapping[str, dt.datetime],
    relabel: str,
) -> dict[str, str]:
    """Video id -> why it is labeled tonight (one of ``REASONS``); videos whose labels are
    current are left out. ``relabel="stale"`` also relabels videos labeled by a checkpoint other
    than ``promoted_id``; ``"changed"`` only new, changed and corrected ones."""
    todo: dict[str, str] = {}
    for task in tasks:
        labels = state.get(task.video_id)
        if labels is None:
            todo[task.video_id] = "new"
        elif labels.fingerprint is not None and labels.fingerprint != fingerprint(task):
            todo[task.video_id] = "changed"
        elif task.video_id in corrected_at and corrected_at[task.video_id] > labels.planned_at:
            todo[task.video_id] = "corrected"
        elif relabel == "stale" and labels.checkpoint_id != promoted_id:
            todo[task.video_id] = "stale"
    return todo


def read_video_masks(
    store_uri: str, labels: Iterable[VideoLabels], options: StorageOptions | None
) -> pa.Table:
    """The masks rows of each video's newest labels, sorted (one read per shard file)."""
    by_file: dict[str, set[str]] = {}
    for item in labels:
        uri = ledger.RunLayout(store_uri, item.run_id).masks_file(item.shard)
        by_file.setdefault(uri, set()).add(item.video_id)
    tables = []
    for uri, videos in sorted(by_file.items()):
        table = MASKS.check(table_io.read_table(uri, options), uri)
        tables.append(table.filter(pc.is_in(table["video_id"], pa.array(sorted(videos)))))
    return MASKS.sort(pa.concat_tables(tables)) if tables else MASKS.empty()
