"""The checkpoint registry: model files named by content, one write-once row per checkpoint,
and the pointer to the promoted one.

Rows never change after they are written (``promoted`` records the gate's decision when the
checkpoint was made), so the registry needs no read-modify-write; what changes is the pointer
``checkpoints/promoted.json``, overwritten atomically on promotion. A registry file is named by
the nightly run that made the checkpoint and written create-only, so a nightly run registers at
most one candidate however often it is resubmitted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

import pyarrow as pa
from pydantic import ValidationError

from pipeline import table_io
from schemas.common import StorageOptions
from schemas.nightly import PromotedPointer
from schemas.tables import CHECKPOINTS, CheckpointRow, TableError, checkpoint_id_of

from .layout import EngineLayout

log = logging.getLogger(__name__)

ROOT_REASON = "root: the model the engine started from"


def store_model(layout: EngineLayout, data: bytes, options: StorageOptions | None) -> str:
    """Copy a model file into ``checkpoints/models/`` under its content name; returns its URI.
    Storing the same bytes twice is a no-op."""
    uri = layout.model_uri(checkpoint_id_of(data))
    with contextlib.suppress(FileExistsError):
        table_io.write_bytes(uri, data, options, overwrite=False)
    return uri


def read_promoted(layout: EngineLayout, options: StorageOptions | None) -> PromotedPointer | None:
    """The promoted-checkpoint pointer, or None when the store has none yet."""
    try:
        raw = table_io.read_json(layout.promoted_uri, options)
    except FileNotFoundError:
        return None
    try:
        return PromotedPointer.model_validate(raw)
    except ValidationError as exc:
        raise TableError(layout.promoted_uri, f"not a valid promoted pointer: {exc}") from exc


def write_promoted(
    layout: EngineLayout, pointer: PromotedPointer, options: StorageOptions | None
) -> None:
    table_io.write_json_atomic(layout.promoted_uri, pointer, options)
    log.info("promoted %s (%s)", pointer.checkpoint_id, pointer.uri)


def register(
    layout: EngineLayout, name: str, row: CheckpointRow, options: StorageOptions | None
) -> CheckpointRow:
    """Write ``row`` as ``registry/<name>.parquet`` unless that file exists; returns the row
    that is registered under ``name`` (the earlier one on a repeat)."""
    uri = layout.registry_file(name)
    try:
        table_io.write_table(CHECKPOINTS.table([row]), uri, options, overwrite=False)
        return row
    except FileExistsError:
        stored = CHECKPOINTS.check(table_io.read_table(uri, options), uri).to_pylist()
        return CheckpointRow(**stored[0])


def read_registry(layout: EngineLayout, options: StorageOptions | None) -> pa.Table:
    """Every registered checkpoint, oldest first."""
    files = table_io.list_files(layout.registry_dir, options, suffix=".parquet")
    tables = [CHECKPOINTS.check(table_io.read_table(f, options), f) for f in files]
    return CHECKPOINTS.sort(pa.concat_tables(tables)) if tables else CHECKPOINTS.empty()


def root_row(checkpoint_id: str, uri: str, jf: dict[str, float] | None = None) -> CheckpointRow:
    """The registry row of the engine's starting model."""
    return CheckpointRow(
        checkpoint_id=checkpoint_id,
        parent_id=None,
        uri=uri,
        nightly_run_id=None,
        selection_id=None,
        selected_masks=0,
        train_steps=0,
        heldout_uri=None,
        jf=None if jf is None else jf["J&F"],
        j=None if jf is None else jf["J"],
        f=None if jf is None else jf["F"],
        parent_jf=None,
        promoted=True,
        reason=ROOT_REASON,
        created_at=dt.datetime.now(dt.UTC),
    )


def ensure_root(
    layout: EngineLayout, initial: bytes, options: StorageOptions | None
) -> PromotedPointer:
    """The promoted pointer; on a store without one, register ``initial`` (a model file's bytes)
    as the root checkpoint and point at it."""
    pointer = read_promoted(layout, options)
    if pointer is not None:
        return pointer
    uri = store_model(layout, initial, options)
    checkpoint_id = checkpoint_id_of(initial)
    register(
        layout,
        f"root-{checkpoint_id.removeprefix('sha256:')}",
        root_row(checkpoint_id, uri),
        options,
    )
    pointer = PromotedPointer(
        checkpoint_id=checkpoint_id, uri=uri, promoted_at=dt.datetime.now(dt.UTC)
    )
    write_promoted(layout, pointer, options)
    return pointer
