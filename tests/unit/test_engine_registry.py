"""The checkpoint registry (pipeline.engine.registry) on a local store: content-named model
files, create-only registry rows, and the promoted pointer."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from pathlib import Path

import pytest

from pipeline import table_io
from pipeline.engine import registry
from pipeline.engine.layout import EngineLayout
from schemas.nightly import PromotedPointer
from schemas.tables import CHECKPOINTS, TableError

T0 = dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.UTC)
MODEL = b"model bytes v1"


@pytest.fixture()
def layout(tmp_path: Path) -> EngineLayout:
    return EngineLayout(str(tmp_path / "store") + "/")


def registry_files(layout: EngineLayout) -> list[str]:
    return table_io.list_files(layout.registry_dir, suffix=".parquet")


def test_checkpoint_id_is_sha256_prefix_of_the_content() -> None:
    checkpoint_id = registry.checkpoint_id_of(MODEL)
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", checkpoint_id)
    assert checkpoint_id == "sha256:" + hashlib.sha256(MODEL).hexdigest()[:16]
    assert registry.checkpoint_id_of(MODEL + b"!") != checkpoint_id


def test_store_model_names_the_file_by_content_and_is_idempotent(layout: EngineLayout) -> None:
    uri = registry.store_model(layout, MODEL, None)
    hex_id = registry.checkpoint_id_of(MODEL).removeprefix("sha256:")
    assert uri == f"{layout.store_uri}/checkpoints/models/{hex_id}.pt"
    assert Path(uri).read_bytes() == MODEL
    assert registry.store_model(layout, MODEL, None) == uri
    assert table_io.list_files(layout.models_dir) == [uri]
    other = registry.store_model(layout, b"another model", None)
    assert other != uri
    assert len(table_io.list_files(layout.models_dir)) == 2


def test_register_is_create_only(layout: EngineLayout) -> None:
    first = dataclasses.replace(
        registry.root_row("sha256:" + "a" * 16, "a.pt"), created_at=T0, reason="first"
    )
    second = dataclasses.replace(first, checkpoint_id="sha256:" + "b" * 16, reason="second")
    assert registry.register(layout, "night-1", first, None) == first
    again = registry.register(layout, "night-1", second, None)
    assert again == first
    assert len(registry_files(layout)) == 1
    assert registry.read_registry(layout, None).to_pylist() == [dataclasses.asdict(first)]


def test_read_registry_returns_every_row_oldest_first(layout: EngineLayout) -> None:
    assert registry.read_registry(layout, None).num_rows == 0
    base = registry.root_row("sha256:" + "0" * 16, "root.pt")
    rows = {
        "a-late": dataclasses.replace(base, checkpoint_id="sha256:" + "c" * 16, created_at=T0),
        "b-early": dataclasses.replace(
            base, checkpoint_id="sha256:" + "a" * 16, created_at=T0 - dt.timedelta(days=2)
        ),
        "c-middle": dataclasses.replace(
            base, checkpoint_id="sha256:" + "b" * 16, created_at=T0 - dt.timedelta(days=1)
        ),
    }
    for name, row in rows.items():
        registry.register(layout, name, row, None)
    table = registry.read_registry(layout, None)
    assert table.schema.equals(CHECKPOINTS.schema)
    assert table["checkpoint_id"].to_pylist() == ["sha256:" + c * 16 for c in "abc"]


def test_ensure_root_registers_and_promotes_the_initial_model_once(layout: EngineLayout) -> None:
    assert registry.read_promoted(layout, None) is None
    pointer = registry.ensure_root(layout, MODEL, None)
    checkpoint_id = registry.checkpoint_id_of(MODEL)
    assert pointer.checkpoint_id == checkpoint_id
    assert Path(pointer.uri).read_bytes() == MODEL
    assert registry.read_promoted(layout, None) == pointer
    (row,) = registry.read_registry(layout, None).to_pylist()
    assert row["checkpoint_id"] == checkpoint_id
    assert row["uri"] == pointer.uri
    assert row["promoted"] is True
    assert row["parent_id"] is None
    assert row["reason"] == registry.ROOT_REASON

    again = registry.ensure_root(layout, b"a different initial model", None)
    assert again == pointer
    assert len(registry_files(layout)) == 1
    assert registry.read_registry(layout, None).num_rows == 1


def test_ensure_root_keeps_an_existing_pointer(layout: EngineLayout) -> None:
    current = PromotedPointer(
        checkpoint_id="sha256:" + "f" * 16, uri="elsewhere.pt", promoted_at=T0, nightly_run_id="n"
    )
    registry.write_promoted(layout, current, None)
    assert registry.ensure_root(layout, MODEL, None) == current
    assert registry_files(layout) == []


@pytest.mark.parametrize("content", [b"{not json", b'{"checkpoint_id": "x"}'])
def test_read_promoted_on_a_corrupt_pointer_names_the_file(
    layout: EngineLayout, content: bytes
) -> None:
    table_io.write_bytes(layout.promoted_uri, content)
    with pytest.raises(TableError) as info:
        registry.read_promoted(layout, None)
    assert info.value.source == layout.promoted_uri
    assert layout.promoted_uri in str(info.value)
