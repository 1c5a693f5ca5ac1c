"""One night of the data engine: label -> select -> fine-tune -> gate -> register and promote.

Every step leaves its result in the store before the next starts, and the run record
(``nightly/<id>.json``) says which steps are done, so a run that dies anywhere and is submitted
again with the same id picks up where it stopped:

- labeling is a corpus job with the id ``<id>-label`` (its own ledger resumes it);
- the selection is written once (create-only) and reused;
- fine-tuning is a Ray Train run named ``<id>-finetune`` under ``training/``; Ray Train resumes
  it from its newest checkpoint, and a run whose final checkpoint exists is not started again;
- the candidate is registered under the nightly id, create-only, so one nightly run yields at
  most one candidate however often it is resubmitted.

Ray must be initialised. The whole run holds the store's lock (:mod:`pipeline.engine.lock`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from pipeline import table_io
from pipeline.corpus import discover
from pipeline.corpus_job import run_label_job
from schemas.label_job import LabelJobConfig
from schemas.nightly import NightlyConfig, NightlyRecord, PromotedPointer
from schemas.tables import SELECTION, CheckpointRow, TableError
from schemas.training import DataConfig, TrainConfig
from stm_core import load_model
from stm_core.errors import STMLabelError

from . import registry
from .corrections import latest_correction_time, read_corrections
from .gate import run_gate
from .layout import EngineLayout
from .lock import StoreLock
from .run_inputs import resolve_label_inputs
from .selection import select_training_data
from .state import label_state, read_video_masks, videos_to_label

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]


class NightlyError(STMLabelError):
    """A nightly run cannot go on (bad held-out set, unreadable store, ...)."""


def run_nightly(config: NightlyConfig, progress: Progress | None = None) -> NightlyRecord:
    """Run (or resume, or return the record of a finished) nightly run; see the module doc."""
    layout = EngineLayout(config.store_uri)
    run_id = config.resolved_run_id
    with StoreLock(layout.lock_uri, run_id, config.lock_ttl_seconds, config.storage):
        record = load_record(layout, run_id, config)
        if record is not None and record.status == "succeeded":
            log.info("nightly run %s already succeeded; nothing to do", run_id)
            return record
        record = record or NightlyRecord(
            run_id=run_id, started_at=dt.datetime.now(dt.UTC), config=config.public_dump()
        )
        record.status, record.error = "running", None
        _save(layout, record, config)
        try:
            _run_steps(config, layout, record, progress)
        except BaseException as exc:
            record.status = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            _save(layout, record, config)
            raise
        record.status, record.finished_at = "succeeded", dt.datetime.now(dt.UTC)
        _save(layout, record, config)
        seconds = ", ".join(f"{step} {s:.1f} s" for step, s in record.step_seconds.items())
        log.info("nightly %s succeeded (%s)", run_id, seconds)
        return record


def load_record(layout: EngineLayout, run_id: str, config: NightlyConfig) -> NightlyRecord | None:
    uri = layout.nightly_record_uri(run_id)
    try:
        return NightlyRecord.model_validate(table_io.read_json(uri, config.storage))
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        raise TableError(uri, f"not a valid nightly run record: {exc}") from exc


def _save(layout: EngineLayout, record: NightlyRecord, config: NightlyConfig) -> None:
    table_io.write_json_atomic(layout.nightly_record_uri(record.run_id), record, config.storage)


def _timed(record: NightlyRecord, step: str, started: float) -> None:
    record.step_seconds[step] = record.step_seconds.get(step, 0.0) + time.monotonic() - started


def _run_steps(
    config: NightlyConfig,
    layout: EngineLayout,
    record: NightlyRecord,
    progress: Progress | None,
) -> None:
    options = config.storage
    if record.parent_checkpoint_id is None:
        pointer = registry.ensure_root(layout, _initial_checkpoint(config), options)
        record.parent_checkpoint_id, record.parent_uri = pointer.checkpoint_id, pointer.uri
        _save(layout, record, config)
    parent_bytes = table_io.read_bytes(record.parent_uri or "", options)

    started = time.monotonic()
    _label(config, layout, record, progress)
    _timed(record, "label", started)
    _save(layout, record, config)

    started = time.monotonic()
    selection = _select(config, layout, record)
    _timed(record, "select", started)
    _save(layout, record, config)
    if selection == 0:
        record.promoted = False
        record.reason = "no training data selected: no fine-tune tonight"
        return

    if record.candidate_uri is None:
        started = time.monotonic()
        candidate = _fine_tune(config, layout, record, parent_bytes)
        record.candidate_uri = registry.store_model(layout, candidate, options)
        record.candidate_id = registry.checkpoint_id_of(candidate)
        _timed(record, "train", started)
        _save(layout, record, config)
    candidate = table_io.read_bytes(record.candidate_uri, options)

    if record.candidate_jf is None:
        started = time.monotonic()
        gate = run_gate(candidate, parent_bytes, config.heldout_uri, options, config.gate)
        record.candidate_jf = gate.candidate["mean"]["J&F"]
        record.parent_jf = gate.parent["mean"]["J&F"]
        record.promoted, record.reason = gate.promoted, gate.reason
        record.candidate_j = gate.candidate["mean"]["J"]
        record.candidate_f = gate.candidate["mean"]["F"]
        _timed(record, "gate", started)
        _save(layout, record, config)

    _register(config, layout, record)


def _initial_checkpoint(config: NightlyConfig) -> bytes:
    uri = config.initial_checkpoint_uri
    if uri is None:
        from stm_core.assets import default_checkpoint_path

        path = default_checkpoint_path()
        if path is None:
            raise NightlyError("no initial_checkpoint_uri and this installation ships no model")
        uri = str(path)
    return table_io.read_bytes(uri, config.storage)


# --- 1. label -------------------------------------------------------------------------------


def _label(
    config: NightlyConfig, layout: EngineLayout, record: NightlyRecord, progress: Progress | None
) -> None:
    options = config.storage
    if record.label_run_id is None:
        found = discover(config.corpus_uri, options, config.seeds_uri, config.seeds_format)
        corrections = read_corrections(layout.corrections_dir, options)
        todo = videos_to_label(
            found.tasks,
            label_state(config.store_uri, options),
            record.parent_checkpoint_id or "",
            latest_correction_time(corrections),
            config.relabel,
        )
        record.label_reasons = {
            reason: sum(1 for r in todo.values() if r == reason)
            for reason in sorted(set(todo.values()))
        }
        record.videos_labeled = len(todo)
        record.label_run_id = f"{record.run_id}-label" if todo else ""
        record.label_video_ids = sorted(todo)
        _save(layout, record, config)
    if not record.label_run_id:
        log.info("nightly %s: every video's labels are current; nothing to label", record.run_id)
        return
    job = LabelJobConfig(
        corpus_uri=config.corpus_uri,
        seeds_uri=config.seeds_uri,
        seeds_format=config.seeds_format,
        output_uri=config.store_uri,
        run_id=record.label_run_id,
        checkpoint_uri=record.parent_uri,
        video_ids=record.label_video_ids,
        corrections_uri=layout.corrections_dir,
        storage=config.storage,
        **config.label.model_dump(),
    )
    inputs = resolve_label_inputs(job)
    summary = run_label_job(job, progress, inputs.checkpoint, inputs.corrections)
    if summary.status != "succeeded":
        raise NightlyError(f"labeling run {job.run_id} {summary.status}; see its errors table")
    log.info(
        "nightly %s: labeled %d videos (%d errors)", record.run_id, summary.videos, summary.errors
    )


# --- 2. select ------------------------------------------------------------------------------


def _select(config: NightlyConfig, layout: EngineLayout, record: NightlyRecord) -> int:
    """Rows in the run's selection (made now, or read back when an earlier attempt made it)."""
    options = config.storage
    uri = layout.selection_uri(record.run_id)
    if record.selection_id is None:
        corpus = {
            t.video_id
            for t in discover(
                config.corpus_uri, options, config.seeds_uri, config.seeds_format
            ).tasks
        }
        state = label_state(config.store_uri, options)
        masks = read_video_masks(
            config.store_uri, [s for v, s in state.items() if v in corpus], options
        )
        table = select_training_data(
            record.run_id,
            masks,
            read_corrections(layout.corrections_dir, options),
            config.selection,
        )
        with contextlib.suppress(FileExistsError):  # an earlier attempt made it: keep that
            table_io.write_table(table, uri, options, overwrite=False)
        record.selection_id = record.run_id
    table = SELECTION.check(table_io.read_table(uri, options), uri)
    record.selected_masks = table.num_rows
    record.selected_frames = table.group_by(["video_id", "frame_index"]).aggregate([]).num_rows
    return table.num_rows


# --- 3. fine-tune ---------------------------------------------------------------------------


def train_config(
    config: NightlyConfig, layout: EngineLayout, record: NightlyRecord, trunk: str
) -> TrainConfig:
    """The Ray Train stage that fine-tunes the promoted checkpoint on tonight's selection."""
    t = config.train
    return TrainConfig(
        name=f"{record.run_id}-finetune",
        stage="video",
        trunk=trunk,  # type: ignore[arg-type]
        init_checkpoint=record.parent_uri,
        crop=t.crop,
        steps=t.steps,
        batch_size=t.batch_size,
        lr=t.lr,
        warmup_steps=t.warmup_steps,
        freeze_bn=t.freeze_bn,
        bf16=t.bf16,
        checkpoint_every=t.checkpoint_every,
        workers=t.workers,
        use_gpu=t.use_gpu,
        threads_per_worker=t.threads_per_worker,
        storage_path=layout.training_dir,
        storage=config.storage,
        data=DataConfig(
            seed=t.seed,
            max_skip_start=t.max_skip,
            max_skip_end=t.max_skip,
            selection_uri=layout.selection_uri(record.run_id),
            corpus_uri=config.corpus_uri,
            seeds_uri=config.seeds_uri,
            seeds_format=config.seeds_format,
            selection_prob=1.0 - t.synthetic_prob,
            max_frame_side=t.max_frame_side,
        ),
    )


def _fine_tune(
    config: NightlyConfig, layout: EngineLayout, record: NightlyRecord, parent: bytes
) -> bytes:
    """The fine-tuned model file: from a finished earlier attempt, else trained (resumed)."""
    from pipeline.training.ray_trainer import fit

    trunk = load_model(io.BytesIO(parent), device="cpu").spec.name
    train = train_config(config, layout, record, trunk)
    record.training_name = train.name
    done = _finished_model(train, layout, config)
    if done is None:
        result = fit(train)
        if result.error is not None:
            raise NightlyError(f"fine-tuning {train.name} failed: {result.error}")
        done = _finished_model(train, layout, config)
    if done is None:
        raise NightlyError(f"fine-tuning {train.name} ended without a final checkpoint")
    return done


def _finished_model(
    train: TrainConfig, layout: EngineLayout, config: NightlyConfig
) -> bytes | None:
    """``model.pt`` of the training run's newest checkpoint if that is its last step (Ray Train
    names checkpoint folders by time, so a finished run's final checkpoint is the newest)."""
    from stm_core.checkpoint import read_metadata

    run_dir = f"{layout.training_dir}/{train.name}"
    models = [
        f
        for f in table_io.list_files(run_dir, config.storage, suffix="model.pt")
        if f.endswith("/model.pt") and f[len(run_dir) + 1 :].startswith("checkpoint_")
    ]
    if not models:
        return None
    data = table_io.read_bytes(max(models), config.storage)
    return data if read_metadata(io.BytesIO(data)).get("step") == train.steps else None


# --- 4/5. register and promote --------------------------------------------------------------


def _register(config: NightlyConfig, layout: EngineLayout, record: NightlyRecord) -> None:
    options = config.storage
    row = registry.register(
        layout,
        record.run_id,
        CheckpointRow(
            checkpoint_id=record.candidate_id or "",
            parent_id=record.parent_checkpoint_id,
            uri=record.candidate_uri or "",
            nightly_run_id=record.run_id,
            selection_id=record.selection_id,
            selected_masks=record.selected_masks or 0,
            train_steps=config.train.steps,
            heldout_uri=config.heldout_uri,
            jf=record.candidate_jf,
            j=record.candidate_j,
            f=record.candidate_f,
            parent_jf=record.parent_jf,
            promoted=bool(record.promoted),
            reason=record.reason or "",
            created_at=dt.datetime.now(dt.UTC),
        ),
        options,
    )
    if row.promoted:
        current = registry.read_promoted(layout, options)
        if current is None or current.checkpoint_id != row.checkpoint_id:
            registry.write_promoted(
                layout,
                PromotedPointer(
                    checkpoint_id=row.checkpoint_id,
                    uri=row.uri,
                    promoted_at=dt.datetime.now(dt.UTC),
                    nightly_run_id=record.run_id,
                ),
                options,
            )
