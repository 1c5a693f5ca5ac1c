"""The corpus labeling job: discover -> plan -> label on Ray actors -> commit.

Exactly once: the plan (shard -> videos) is saved on the first attempt and reused; a shard is
finished when both of its files exist, and they are written whole under deterministic names; the
run record and the ``_SUCCESS`` marker come last. Rerunning a run id skips finished shards and
redoes the rest, so the final tables equal those of an undisturbed run. A dead actor is restarted
by Ray (``max_restarts``) and its shard retried (``max_task_retries``).

The job reads its corpus and writes its output, and knows no other store: the checkpoint and the
human corrections are handed in by whoever starts the run, which resolves the config's defaults
that live in the data engine's store (``pipeline.engine.run_inputs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import ray
from ray.util import ActorPool

from schemas.common import StorageOptions
from schemas.label_job import LabelJobConfig
from schemas.tables import ERRORS, checkpoint_id_of
from stm_core import load_model
from stm_core.adaptation import Adaptation
from stm_core.errors import CheckpointError, STMLabelError

from . import ledger, table_io
from .corpus import RleSeed, discover, fingerprint
from .label_actor import LabelWorker, ProgressTracker
from .label_shard import LabelSettings, ShardSummary, error_row
from .preflight import describe_cause
from .progress import MAX_ERROR_ROWS, describe_discovery

log = logging.getLogger(__name__)

ACTOR_RESTARTS = 3  # per actor: a killed process or a lost node
SHARD_RETRIES = 3  # per shard call, on a restarted actor
DISCOVERY_ERRORS_FILE = "discovery.parquet"
POLL_SECONDS = 1.0  # how often the driver reads the progress tracker while shards run

Progress = Callable[[dict[str, Any]], None]  # a snapshot: see pipeline.progress
# Video id -> the human corrections to apply as seeds on their frames. Called once, after the
# run's plan is saved (see _with_corrections), so the corrections are read as late as possible.
Corrections = Callable[[], Mapping[str, tuple[RleSeed, ...]]]


class JobConfigError(STMLabelError):
    """The run cannot start: bad checkpoint, unreachable output, ... (fails before any work)."""


@dataclass
class RunSummary:
    """What a run did; also its run record (with the config). ``videos``, ``frames``,
    ``masks`` and ``errors`` count the run's tables (earlier attempts included); the
    ``videos_*`` counts split the videos by what this attempt did with them: labeled, failed
    (an errors row, discovery's included), or skipped because an earlier attempt had finished
    their shard. ``frames_per_second``: frames labeled by this attempt over its wall time.
    ``error_rows``: the first ``MAX_ERROR_ROWS`` rows of the errors table (video_id, stage,
    error_type, message), by video."""

    run_id: str
    status: str
    output_uri: str
    checkpoint_id: str
    videos: int = 0
    frames: int = 0
    masks: int = 0
    errors: int = 0
    shards: int = 0
    shards_skipped: int = 0
    wall_seconds: float = 0.0
    frames_per_second: float = 0.0
    workers: list[dict[str, object]] = field(default_factory=list)
    videos_labeled: int = 0
    videos_failed: int = 0
    videos_skipped: int = 0
    frames_labeled: int = 0
    error_rows: list[dict[str, str | None]] = field(default_factory=list)


def read_checkpoint(uri: str, options: StorageOptions) -> tuple[bytes, str]:
    """The checkpoint's bytes and id (``sha256:<16 hex>``), validated by loading it once here so
    a wrong file fails the run before any worker starts."""
    try:
        data = table_io.read_bytes(uri, options)
    except Exception as exc:  # noqa: BLE001 - any failure to read it is the run's one-line error
        cause = describe_cause(exc, uri, options)
        raise JobConfigError(f"{uri}: cannot read the checkpoint: {cause}") from None
    import io

    buffer = io.BytesIO(data)
    buffer.name = uri  # load_model's errors then name the checkpoint, not "<file object>"
    try:
        load_model(buffer, device="cpu")
    except CheckpointError as exc:
        raise JobConfigError(str(exc)) from None
    return data, checkpoint_id_of(data)


def worker_resources(config: LabelJobConfig) -> tuple[int, dict[str, float]]:
    """How many actors and what each reserves: one per GPU when the cluster has GPUs (a
    ``num_gpus`` request on a GPU-less cluster would wait forever), else CPU actors."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    threads = config.cpu_threads_per_worker
    if gpus >= config.gpus_per_worker:
        default = int(gpus // config.gpus_per_worker)
        count = config.workers or default
        # At most a fair share of the CPUs each (0.5 for 4 GPUs and 2 CPUs): a whole CPU per
        # GPU worker would leave the workers beyond the CPU count waiting forever.
        share = math.floor(float(resources.get("CPU", 0)) / count * 1e4) / 1e4
        return count, {"num_gpus": config.gpus_per_worker, "num_cpus": min(1.0, share)}
    capacity = max(1, int(resources.get("CPU", 1) // threads))
    count = config.workers or capacity
    if count > capacity:  # more would wait forever for CPUs the cluster does not have
        log.warning(
            "workers=%d x %d threads exceeds the cluster's CPUs; using %d workers",
            count,
            threads,
            capacity,
        )
        count = capacity
    return count, {"num_gpus": 0, "num_cpus": threads}


def run_label_job(
    config: LabelJobConfig,
    progress: Progress | None = None,
    checkpoint: tuple[bytes, str] | None = None,
    corrections: Corrections | None = None,
) -> RunSummary:
    """Run (or resume, or no-op on a committed) labeling run; Ray must be initialised.

    ``checkpoint``: the model, as :func:`read_checkpoint` returns it; when None, the file that
    ``config.checkpoint_uri`` names. ``corrections``: required when ``config.corrections_uri``
    is set. A config that leaves ``checkpoint_uri`` unset or sets ``corrections_uri`` names
    state of the data engine's store: the caller resolves it
    (``pipeline.engine.run_inputs.resolve_label_inputs``) and passes the result here.
    """
    start = time.monotonic()
    if checkpoint is None:
        if config.checkpoint_uri is None:
            raise JobConfigError(
                "checkpoint_uri is unset: its default (the promoted checkpoint, else the shipped "
                "model) is resolved by the caller and passed as checkpoint="
            )
        checkpoint = read_checkpoint(config.checkpoint_uri, config.storage)
    if config.corrections_uri is not None and corrections is None:
        raise JobConfigError(
            f"corrections_uri {config.corrections_uri} is read by the caller and passed as "
            "corrections="
        )
    checkpoint_bytes, checkpoint_id = checkpoint
    summary = RunSummary(config.run_id, "running", config.output_uri, checkpoint_id)
    if ledger.is_committed(config.output_uri, config.run_id, config.storage):
        log.info("run %s is already committed; nothing to do", config.run_id)
        record = table_io.read_json(
            ledger.RunLayout(config.output_uri, config.run_id).record_uri, config.storage
        )
        return RunSummary(**{k: record[k] for k in asdict(summary) if k in record})

    found = discover(config.corpus_uri, config.storage, config.seeds_uri, config.seeds_format)
    log.info("run %s: %s", config.run_id, describe_discovery(found.tasks, found.errors))
    if not found.tasks and any(e.video_id is None for e in found.errors):
        return _fail_unreadable(config, summary, found.errors, start)
    tasks = _select_tasks(config, found.tasks)
    plan = ledger.load_or_create_plan(
        config.output_uri,
        config.run_id,
        sorted(tasks),
        config.videos_per_shard,
        config.storage,
        fingerprints={v: fingerprint(t) for v, t in tasks.items()},
    )
    tasks = _with_corrections(tasks, corrections)
    settings = LabelSettings(
        run_id=config.run_id,
        checkpoint_id=checkpoint_id,
        started_at=plan.created_at,
        mem_every=config.mem_every,
        max_memory_frames=config.max_memory_frames,
        max_frame_side=config.max_frame_side,
        adaptation=Adaptation(**config.adaptation.model_dump()),
        precision=config.precision,
        videos_per_batch=config.videos_per_batch,
    )
    _write_discovery_errors(config, settings, found.errors)
    done = ledger.finished_shards(config.output_uri, config.run_id, config.storage)
    todo = [s for s in plan.shards if s.name not in done]
    summary.shards, summary.shards_skipped = len(plan.shards), len(plan.shards) - len(todo)
    missing = [v for s in todo for v in s.video_ids if v not in tasks]
    if missing:
        raise JobConfigError(
            f"run {config.run_id}: planned videos are no longer in the corpus: {missing[:5]}"
        )

    if todo:
        totals = progress_totals(len(plan.shards), todo, tasks, len(found.errors))
        summary.workers = _label_on_actors(
            config, checkpoint_bytes, settings, todo, tasks, progress, totals
        )
    summary.wall_seconds = time.monotonic() - start
    skipped = {v for s in plan.shards if s.name in done for v in s.video_ids}
    _finish(config, summary, len(found.errors), skipped)
    return summary


def progress_totals(shards: int, todo: list, tasks: dict, discovery_errors: int) -> dict[str, int]:
    """What the progress tracker starts from: all ``shards`` of the plan, those not ``todo``
    already finished; the videos of the shards to do, the frames known of them (frame
    folders) and how many are video files, whose frames are counted once opened."""
    todo_tasks = [tasks[v] for s in todo for v in s.video_ids]
    return {
        "shards": shards - len(todo),
        "shards_total": shards,
        "videos_total": len(todo_tasks),
        "frames_total": sum(t.num_frames or 0 for t in todo_tasks),
        "videos_unprobed": sum(t.num_frames is None for t in todo_tasks),
        "errors": discovery_errors,
    }


def committed_shards(config: LabelJobConfig) -> tuple[int, int | None]:
    """(shards finished, shards planned) of the run so far; None planned before its plan is
    saved. For the line an interrupted run leaves."""
    plan = ledger.load_plan(config.output_uri, config.run_id, config.storage)
    if plan is None:
        return 0, None
    done = ledger.finished_shards(config.output_uri, config.run_id, config.storage)
    return len(done & {s.name for s in plan.shards}), len(plan.shards)


def _fail_unreadable(
    config: LabelJobConfig, summary: RunSummary, errors: list, start: float
) -> RunSummary:
    """Nothing to label because the corpus or the seed source itself cannot be read: record the
    errors and a failed run record, but do not commit, so the same run id retries once the
    store is readable (an empty committed run would pass for "labeled nothing")."""
    settings = LabelSettings(
        run_id=config.run_id,
        checkpoint_id=summary.checkpoint_id,
        started_at=dt.datetime.now(dt.UTC),
    )
    _write_discovery_errors(config, settings, errors)
    summary.status, summary.errors = "failed", len(errors)
    summary.videos_failed = len({e.video_id for e in errors if e.video_id is not None})
    summary.error_rows = _error_rows(
        [
            {
                "video_id": e.video_id,
                "stage": e.stage,
                "error_type": e.error_type,
                "message": e.message,
            }
            for e in errors
        ]
    )
    summary.wall_seconds = time.monotonic() - start
    reasons = "; ".join(e.message for e in errors if e.video_id is None)
    _write_record(config, summary, len(errors), failure=f"nothing to label: {reasons}")
    log.error("run %s failed: nothing to label: %s", config.run_id, reasons)
    return summary


def _select_tasks(config: LabelJobConfig, listed: list) -> dict:
    """Video id -> task of the videos this run labels (``video_ids`` when given)."""
    tasks = {t.video_id: t for t in listed}
    if config.video_ids is not None:
        unknown = sorted(set(config.video_ids) - set(tasks))
        if unknown:
            log.warning(
                "run %s: %d requested video(s) are not in the corpus, e.g. %s",
                config.run_id,
                len(unknown),
                unknown[:5],
            )
        tasks = {v: tasks[v] for v in config.video_ids if v in tasks}
    return tasks


def _with_corrections(tasks: dict, corrections: Corrections | None) -> dict:
    """``tasks`` with their human corrections attached. Read after the plan is saved, so a
    correction stored meanwhile is used by this run and, being newer than the plan, also marks
    the video for relabeling by the data engine: a race costs an extra relabel, never a lost
    correction."""
    if corrections is None:
        return tasks
    fixes = corrections()
    return {
        v: dataclasses.replace(t, corrections=fixes[v]) if v in fixes else t
        for v, t in tasks.items()
    }


def _label_on_actors(
    config: LabelJobConfig,
    checkpoint: bytes,
    settings: LabelSettings,
    todo: list,
    tasks: dict,
    progress: Progress | None,
    totals: dict[str, int],
) -> list[dict[str, object]]:
    count, options = worker_resources(config)
    count = min(count, len(todo))
    tracker = ray.remote(ProgressTracker).options(num_cpus=0).remote(totals)
    actor_class = ray.remote(LabelWorker).options(
        max_restarts=ACTOR_RESTARTS, max_task_retries=SHARD_RETRIES, **options
    )
    checkpoint_ref = ray.put(checkpoint)
    actors = [
        actor_class.remote(
            checkpoint_ref,
            settings,
            config.output_uri,
            config.storage,
            config.cpu_threads_per_worker,
            tracker,
        )
        for _ in range(count)
    ]
    try:  # the actors hold CPUs/GPUs: free them even when a shard fails for good
        placements = ray.get([a.placement.remote() for a in actors])
        log.info("%d labeling workers: %s", count, placements)
        pool = ActorPool(actors)
        for shard in todo:
            pool.submit(lambda a, s: a.label.remote(s.name, [tasks[v] for v in s.video_ids]), shard)
        started = time.monotonic()
        while pool.has_next():
            with contextlib.suppress(TimeoutError):  # a timeout only means: report progress
                done: ShardSummary = pool.get_next_unordered(timeout=POLL_SECONDS)
                log.info(
                    "%s: %d videos, %d frames, %d errors",
                    done.shard,
                    done.videos,
                    done.frames,
                    done.errors,
                )
            if progress is not None:
                progress(_snapshot(tracker, started, finished=not pool.has_next()))
    finally:
        for actor in actors:
            ray.kill(actor)
        ray.kill(tracker)
    return placements


def _snapshot(tracker: ray.actor.ActorHandle, started: float, finished: bool) -> dict[str, Any]:
    """The tracker's counts plus the time since the actors were ready and the frame rate."""
    snap = ray.get(tracker.snapshot.remote())
    snap["elapsed_seconds"] = elapsed = time.monotonic() - started
    snap["frames_per_second"] = snap["frames"] / max(elapsed, 1e-9)
    snap["finished"] = finished
    return snap


def _error_rows(rows: list[dict[str, str | None]]) -> list[dict[str, str | None]]:
    """The first ``MAX_ERROR_ROWS`` errors rows by video (rows of no one video first)."""
    rows = sorted(rows, key=lambda r: (r["video_id"] or "", r["stage"] or "", r["message"] or ""))
    return rows[:MAX_ERROR_ROWS]


def _write_discovery_errors(config: LabelJobConfig, settings: LabelSettings, errors) -> None:
    """The discovery problems as an errors file, checked against the table's contract like the
    shards' files (discovery's stages are the table's own names)."""
    rows = [error_row(settings, e.video_id, e.stage, e.error_type, e.message) for e in errors]
    uri = f"{ledger.RunLayout(config.output_uri, config.run_id).errors_dir}/{DISCOVERY_ERRORS_FILE}"
    table = ERRORS.sort(ERRORS.table(rows))
    table_io.write_table(table, uri, config.storage)


def _read_folder(folder: str, config: LabelJobConfig, columns: list[str]) -> pa.Table:
    files = table_io.list_files(folder, config.storage, suffix=".parquet")
    tables = [table_io.read_table(f, config.storage, columns=columns) for f in files]
    return (
        pa.concat_tables(tables)
        if tables
        else pa.table({c: pa.array([], pa.string()) for c in columns})
    )


def _finish(
    config: LabelJobConfig, summary: RunSummary, discovery_errors: int, skipped: set[str]
) -> None:
    """Count what the tables hold, write the run record, then the success marker. ``skipped``:
    the videos of shards an earlier attempt had finished."""
    layout = ledger.RunLayout(config.output_uri, config.run_id)
    masks = _read_folder(layout.masks_dir, config, ["video_id", "frame_index"])
    columns = ["video_id", "stage", "error_type", "message"]
    errors = _read_folder(layout.errors_dir, config, columns)
    summary.masks = masks.num_rows
    summary.errors = errors.num_rows
    frames = masks.group_by(["video_id", "frame_index"]).aggregate([])
    summary.frames = frames.num_rows
    labeled = set(masks.column("video_id").to_pylist())
    summary.videos = len(labeled)
    failed = {v for v in errors.column("video_id").to_pylist() if v is not None}
    summary.videos_labeled = len(labeled - skipped)
    summary.videos_failed = len(failed - skipped)
    summary.videos_skipped = len(skipped)
    summary.frames_labeled = sum(v not in skipped for v in frames.column("video_id").to_pylist())
    summary.frames_per_second = summary.frames_labeled / max(summary.wall_seconds, 1e-9)
    summary.error_rows = _error_rows(errors.select(columns).to_pylist())
    summary.status = "succeeded"
    _write_record(config, summary, discovery_errors)
    ledger.mark_success(config.output_uri, config.run_id, config.storage)


def _write_record(
    config: LabelJobConfig, summary: RunSummary, discovery_errors: int, **extra: str
) -> None:
    """The run record: the summary, the config without secrets, and when the run ended."""
    record = asdict(summary) | {
        "config": config.public_dump(),
        "discovery_errors": discovery_errors,
        **extra,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    ledger.write_run_record(config.output_uri, config.run_id, record, config.storage)
