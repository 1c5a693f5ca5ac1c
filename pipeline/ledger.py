"""The run ledger: where a labeling run's files live, which shards are done, and the commit.

Layout under the output URI (every name deterministic, from the run id and shard index)::

    masks/run_id=<id>/shard-00007.parquet    masks rows of shard 7's videos (schemas.tables.MASKS)
    errors/run_id=<id>/shard-00007.parquet   errors rows of shard 7, possibly none (ERRORS)
    runs/<id>/plan.json                      the shard plan: created once, reused on resume
    runs/<id>.json                           the run record (counts, timings, config), at commit
    runs/<id>/_SUCCESS                       the commit marker, written last

Shard protocol (:func:`write_shard`): each file is written whole and atomically
(:mod:`pipeline.table_io`), the errors file FIRST and the masks file LAST. A shard is finished
when both files exist (:func:`finished_shards`), so a crash anywhere leaves either nothing, or an
errors file alone (the shard reruns and replaces it under the same name), or a finished shard.
A masks file therefore never exists for an unfinished shard, and a rerun never adds rows next to
old ones: it can only replace a whole file of the same name.

Commit protocol: all shards of the plan finished -> :func:`write_run_record` ->
:func:`mark_success`, which refuses to write the marker while any planned shard or the record is
missing. Readers that want only complete runs require ``runs/<id>/_SUCCESS``; while a run is
going, ``masks/run_id=<id>/`` holds finished shards only.

Reading the tables as one dataset: ``run_id`` is both the hive partition and a string column in
every file, so ``pyarrow.dataset.dataset(<out>/masks, partitioning="hive")``, DuckDB's
``read_parquet('<out>/masks/*/*.parquet', hive_partitioning=true)`` and Polars'
``read_parquet('<out>/masks/')`` all see ``run_id`` as a string, even for numeric-looking ids.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from pipeline import table_io
from schemas.common import StorageOptions
from schemas.label_job import RUN_ID_PATTERN
from schemas.tables import ERRORS, MASKS, RunPlan, ShardPlan, SuccessMarker, TableError

logger = logging.getLogger(__name__)

SHARD_PATTERN = re.compile(r"^shard-\d{5,}$")
SUCCESS_NAME = "_SUCCESS"
Document = TypeVar("Document", bound=BaseModel)


class LedgerError(RuntimeError):
    """The ledger cannot do what was asked (commit an unfinished run, read a corrupt plan)."""


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name folders and hive partitions everywhere: letters, digits,
    ``_ . -``, starting with a letter or digit, at most 128 characters."""
    if not isinstance(run_id, str) or not re.match(RUN_ID_PATTERN, run_id):
        raise ValueError(
            f"run id {run_id!r} must be 1-128 characters of letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    return run_id


def shard_name(index: int) -> str:
    """``7 -> "shard-00007"``: zero-padded so names sort in index order up to 99999 shards."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"shard-{index:05d}"


def plan_shards(video_ids: Iterable[str], videos_per_shard: int) -> list[list[str]]:
    """Video ids -> shards: the ids sorted, cut into contiguous chunks of ``videos_per_shard``
    (the last may be shorter). Independent of listing order; duplicate ids are an error."""
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}")
    ids = sorted(video_ids)
    twice = sorted({a for a, b in zip(ids, ids[1:], strict=False) if a == b})
    if twice:
        raise ValueError(f"duplicate video ids: {twice[:10]}")
    return [ids[i : i + videos_per_shard] for i in range(0, len(ids), videos_per_shard)]


def make_plan(
    run_id: str,
    video_ids: Iterable[str],
    videos_per_shard: int,
    created_at: dt.datetime | None = None,
    fingerprints: Mapping[str, str] | None = None,
) -> RunPlan:
    """The :class:`RunPlan` of :func:`plan_shards` (pure; ``created_at`` defaults to now)."""
    chunks = plan_shards(video_ids, videos_per_shard)
    return RunPlan(
        run_id=check_run_id(run_id),
        videos_per_shard=videos_per_shard,
        shards=[ShardPlan(name=shard_name(i), video_ids=c) for i, c in enumerate(chunks)],
        created_at=created_at or dt.datetime.now(dt.UTC),
        fingerprints=dict(fingerprints or {}),
    )


@dataclass(frozen=True)
class RunLayout:
    """The URIs of one run's files (pure string work, no IO)."""

    output_uri: str
    run_id: str

    def __post_init__(self) -> None:
        check_run_id(self.run_id)
        object.__setattr__(self, "output_uri", self.output_uri.rstrip("/"))

    @property
    def masks_dir(self) -> str:
        return f"{self.output_uri}/masks/run_id={self.run_id}"

    @property
    def errors_dir(self) -> str:
        return f"{self.output_uri}/errors/run_id={self.run_id}"

    @property
    def plan_uri(self) -> str:
        return f"{self.output_uri}/runs/{self.run_id}/plan.json"

    @property
    def record_uri(self) -> str:
        return f"{self.output_uri}/runs/{self.run_id}.json"

    @property
    def success_uri(self) -> str:
        return f"{self.output_uri}/runs/{self.run_id}/{SUCCESS_NAME}"

    def masks_file(self, shard: str) -> str:
        return f"{self.masks_dir}/{_check_shard(shard)}.parquet"

    def errors_file(self, shard: str) -> str:
        return f"{self.errors_dir}/{_check_shard(shard)}.parquet"


def _check_shard(shard: str) -> str:
    if not SHARD_PATTERN.match(shard):
        raise ValueError(f"shard name {shard!r} is not like 'shard-00007'")
    return shard


def _read_document(
    uri: str, model: type[Document], what: str, options: StorageOptions | None
) -> Document | None:
    """The JSON document at ``uri`` as ``model``, or None when there is no file; a file that is
    not a valid ``what`` raises :class:`LedgerError`."""
    try:
        raw = table_io.read_json(uri, options)
    except FileNotFoundError:
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise LedgerError(f"{uri}: not a valid {what}: {exc}") from exc


# --- plan -----------------------------------------------------------------------------------


def load_plan(
    output_uri: str, run_id: str, options: StorageOptions | None = None
) -> RunPlan | None:
    """The saved plan of ``run_id``, or None if the run has none yet."""
    uri = RunLayout(output_uri, run_id).plan_uri
    plan = _read_document(uri, RunPlan, "run plan", options)
    if plan is None:
        return None
    if plan.run_id != run_id:
        raise LedgerError(f"{uri}: plan is for run {plan.run_id!r}, not {run_id!r}")
    return plan


def save_plan(output_uri: str, plan: RunPlan, options: StorageOptions | None = None) -> RunPlan:
    """Store ``plan`` unless the run already has one; returns the plan that is stored. Create-only,
    so of two first attempts racing, both end up with the same (the first) plan."""
    uri = RunLayout(output_uri, plan.run_id).plan_uri
    try:
        table_io.write_json_atomic(uri, plan, options, overwrite=False)
    except FileExistsError:
        stored = load_plan(output_uri, plan.run_id, options)
        if stored is None:  # pragma: no cover - deleted between the two calls
            raise LedgerError(f"{uri}: plan vanished while saving it") from None
        return stored
    return plan


def load_or_create_plan(
    output_uri: str,
    run_id: str,
    video_ids: Iterable[str],
    videos_per_shard: int,
    options: StorageOptions | None = None,
    fingerprints: Mapping[str, str] | None = None,
) -> RunPlan:
    """The run's plan: the saved one on a resume (the corpus listing is then only compared with
    it, and differences logged), else a new plan of ``video_ids``, saved. ``fingerprints``
    (video id -> :func:`pipeline.corpus.fingerprint`) are recorded in a new plan."""
    video_ids = list(video_ids)
    plan = load_plan(output_uri, run_id, options)
    if plan is None:
        new = make_plan(run_id, video_ids, videos_per_shard, fingerprints=fingerprints)
        plan = save_plan(output_uri, new, options)
    planned, listed = set(plan.video_ids), set(video_ids)
    if listed - planned:
        logger.warning(
            "run %s: %d listed video(s) are not in its saved plan and are not labelled, e.g. %s",
            run_id,
            len(listed - planned),
            sorted(listed - planned)[:5],
        )
    if planned - listed:
        logger.warning(
            "run %s: %d planned video(s) are no longer listed, e.g. %s",
            run_id,
            len(planned - listed),
            sorted(planned - listed)[:5],
        )
    if plan.videos_per_shard != videos_per_shard:
        logger.warning(
            "run %s: keeping the saved plan's %d videos per shard (asked: %d)",
            run_id,
            plan.videos_per_shard,
            videos_per_shard,
        )
    return plan


# --- shards ---------------------------------------------------------------------------------


def finished_shards(
    output_uri: str, run_id: str, options: StorageOptions | None = None
) -> set[str]:
    """Names of the shards whose errors AND masks files both exist (two fresh listings)."""
    layout = RunLayout(output_uri, run_id)

    def names(folder: str) -> set[str]:
        files = table_io.list_files(folder, options, suffix=".parquet")
        stems = (f.rsplit("/", 1)[-1].removesuffix(".parquet") for f in files)
        return {s for s in stems if SHARD_PATTERN.match(s)}

    return names(layout.errors_dir) & names(layout.masks_dir)


def write_shard(
    output_uri: str,
    run_id: str,
    shard: str,
    masks: pa.Table,
    errors: pa.Table,
    options: StorageOptions | None = None,
) -> None:
    """Write one shard's two files: checked against their schemas, masks sorted by (video_id,
    frame_index, object_id), errors file first and masks file last (see the module docstring).
    Every row must belong to ``run_id``."""
    layout = RunLayout(output_uri, run_id)
    masks_uri, errors_uri = layout.masks_file(shard), layout.errors_file(shard)
    masks = MASKS.sort(MASKS.check(masks, masks_uri))
    errors = ERRORS.sort(ERRORS.check(errors, errors_uri))
    for uri, table in ((masks_uri, masks), (errors_uri, errors)):
        if table.num_rows and not pc.all(pc.equal(table["run_id"], run_id)).as_py():
            raise TableError(uri, f"rows of another run than {run_id!r}")
    table_io.write_table(errors, errors_uri, options)
    table_io.write_table(masks, masks_uri, options)
    logger.info(
        "run %s %s: %d mask rows, %d errors", run_id, shard, masks.num_rows, errors.num_rows
    )


# --- commit ---------------------------------------------------------------------------------


def write_run_record(
    output_uri: str,
    run_id: str,
    record: Mapping[str, Any] | BaseModel,
    options: StorageOptions | None = None,
) -> str:
    """Write the run record (``runs/<id>.json``; ``run_id`` added if absent) and return its URI.
    Pydantic secrets in it are masked."""
    uri = RunLayout(output_uri, run_id).record_uri
    data = to_jsonable_python(record)
    if not isinstance(data, dict):
        raise TypeError(f"a run record must be a mapping or a model, got {type(record).__name__}")
    if data.setdefault("run_id", run_id) != run_id:
        raise LedgerError(f"{uri}: record is for run {data['run_id']!r}, not {run_id!r}")
    table_io.write_json_atomic(uri, data, options)
    return uri


def mark_success(
    output_uri: str, run_id: str, options: StorageOptions | None = None
) -> SuccessMarker:
    """Commit the run: write ``runs/<id>/_SUCCESS`` once every planned shard is finished and the
    run record exists. Committing a committed run returns the existing marker unchanged."""
    layout = RunLayout(output_uri, run_id)
    existing = read_success(output_uri, run_id, options)
    if existing is not None:
        return existing
    plan = load_plan(output_uri, run_id, options)
    if plan is None:
        raise LedgerError(f"{layout.plan_uri}: run {run_id!r} has no plan; nothing to commit")
    missing = sorted(set(plan.shard_names) - finished_shards(output_uri, run_id, options))
    if missing:
        raise LedgerError(
            f"run {run_id!r} cannot be committed: {len(missing)} of {len(plan.shards)} shard(s) "
            f"unfinished, e.g. {missing[:5]}"
        )
    if not table_io.exists(layout.record_uri, options):
        raise LedgerError(f"{layout.record_uri}: write the run record before the marker")
    marker = SuccessMarker(
        run_id=run_id, shards=len(plan.shards), committed_at=dt.datetime.now(dt.UTC)
    )
    table_io.write_json_atomic(layout.success_uri, marker, options)
    return marker


def read_success(
    output_uri: str, run_id: str, options: StorageOptions | None = None
) -> SuccessMarker | None:
    """The run's commit marker, or None if the run is not committed."""
    uri = RunLayout(output_uri, run_id).success_uri
    return _read_document(uri, SuccessMarker, "success marker", options)


def is_committed(output_uri: str, run_id: str, options: StorageOptions | None = None) -> bool:
    """Whether ``runs/<id>/_SUCCESS`` exists."""
    return table_io.exists(RunLayout(output_uri, run_id).success_uri, options)
