"""``stm-label history`` (pipeline.engine.history) on stores built here, without Ray or training.

The store is written the way a nightly run writes it: run records with
``table_io.write_json_atomic``, registry rows with ``registry.register`` and the promoted pointer
with ``registry.write_promoted``. Three nights over a root model: night 1 promotes candidate A
(J&F 31.24 vs 29.87), night 2 rejects B (30.51 vs A's 31.46), night 3 fails before training.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from PIL import Image

from jobs.cli import main
from pipeline import table_io
from pipeline.engine import registry
from pipeline.engine.history import (
    HistoryError,
    format_history,
    history_command,
    plot_points,
    read_history,
)
from pipeline.engine.layout import EngineLayout
from schemas.nightly import NightlyRecord, PromotedPointer

T0 = dt.datetime(2026, 11, 20, 2, 15, tzinfo=dt.UTC)
ROOT = "sha256:" + "0" * 16
A = "sha256:" + "a" * 16
B = "sha256:" + "b" * 16
LONG_REASON = "kept the promoted checkpoint: " + "because " * 20


def _row(checkpoint_id: str, parent: str | None, night: str | None, hours: float, **kw):
    base = registry.root_row(checkpoint_id, f"store/models/{checkpoint_id[7:]}.pt")
    return dataclasses.replace(
        base,
        parent_id=parent,
        nightly_run_id=night,
        created_at=T0 + dt.timedelta(hours=hours),
        **kw,
    )


def _record(run_id: str, hours: float, **kw) -> NightlyRecord:
    return NightlyRecord(run_id=run_id, started_at=T0 + dt.timedelta(hours=hours), **kw)


@pytest.fixture()
def store(tmp_path: Path) -> str:
    uri = str(tmp_path / "store")
    layout = EngineLayout(uri)
    rows = {
        "root-0000": _row(ROOT, None, None, 0.0),
        "nightly-a": _row(
            A, ROOT, "nightly-a", 1.0, jf=0.3124, parent_jf=0.2987, promoted=True, reason="ok"
        ),
        "nightly-b": _row(
            B, A, "nightly-b", 25.0, jf=0.3051, parent_jf=0.3146, promoted=False, reason="no"
        ),
    }
    for name, row in rows.items():
        registry.register(layout, name, row, None)
    registry.write_promoted(
        layout, PromotedPointer(checkpoint_id=A, uri="x", promoted_at=T0, nightly_run_id="a"), None
    )
    # run ids sort the other way round from their start times: the history sorts by start
    records = [
        _record(
            "nightly-b",
            24.0,
            status="succeeded",
            videos_labeled=1234,
            selected_masks=56789,
            candidate_id=B,
            candidate_jf=0.3051,
            parent_jf=0.3146,
            promoted=False,
            reason=LONG_REASON,
            config={"store_uri": uri},
        ),
        _record(
            "nightly-a",
            0.5,
            status="succeeded",
            videos_labeled=12,
            selected_masks=340,
            candidate_id=A,
            candidate_jf=0.3124,
            parent_jf=0.2987,
            promoted=True,
            reason="promoted: gain +1.37",
        ),
        _record("nightly-0-failed", 48.0, status="failed", error="RuntimeError: boom\nline 2"),
    ]
    for record in records:
        table_io.write_json_atomic(layout.nightly_record_uri(record.run_id), record)
    (Path(layout.nightly_dir) / "LOCK").write_text("{}")  # not a record: no .json suffix
    return uri


def test_read_history_sorts_records_by_start_and_reads_the_registry(store: str) -> None:
    records, checkpoints = read_history(store)
    assert [r.run_id for r in records] == ["nightly-a", "nightly-b", "nightly-0-failed"]
    assert checkpoints.column("checkpoint_id").to_pylist() == [ROOT, A, B]


def test_tables_show_the_numbers_in_percent_and_star_the_promoted_checkpoint(store: str) -> None:
    text = history_command(store, None)
    runs, checkpoints = text.split("\n\ncheckpoints (3)\n")
    lines = {line.split()[0]: line for line in runs.splitlines()[3:]}
    assert runs.startswith("nightly runs (3)\nrun id")
    night_a = lines["nightly-a"].split()
    assert night_a[:4] == ["nightly-a", "succeeded", "2026-11-20", "02:45"]
    assert night_a[4:10] == ["12", "340", "a" * 16, "31.2", "29.9", "yes"]
    night_b = lines["nightly-b"]
    for cell in ("1,234", "56,789", "b" * 16, "30.5", "31.5", " no "):
        assert cell in night_b
    assert night_b.endswith("...") and "because because" in night_b
    assert len(night_b.split("  kept")[-1]) < len(LONG_REASON)
    failed = lines["nightly-0-failed"]
    assert "failed" in failed and "error: RuntimeError: boom line 2" in failed
    rows = checkpoints.splitlines()
    header, starred = rows[0], [r for r in rows if r.startswith("*  ")]
    assert header.split() == ["checkpoint", "parent", "nightly", "run", "created", "(UTC)"] + [
        "J&F",
        "%",
        "promoted",
    ]
    assert len(starred) == 1 and starred[0].split()[1:3] == ["a" * 16, "0" * 16]
    assert starred[0].split()[-2:] == ["31.2", "yes"]
    root = next(r for r in rows if r.split()[:1] == ["0" * 16])
    assert root.split()[-2:] == ["-", "yes"]  # the root has no J&F of its own
    assert "30.5" in next(r for r in rows if "b" * 16 + " " in r)
    assert rows[-1].startswith("* = the promoted checkpoint")


def test_a_pointer_outside_the_registry_is_reported(store: str) -> None:
    records, checkpoints = read_history(store)
    text = format_history(records, checkpoints, "sha256:" + "f" * 16)
    assert "not in the registry" in text
    assert not any(line.startswith("*  ") for line in text.splitlines())


def test_json_holds_both_lists_as_stored(store: str) -> None:
    doc = json.loads(history_command(store, None, as_json=True))
    assert [r["run_id"] for r in doc["nightly_runs"]] == [
        "nightly-a",
        "nightly-b",
        "nightly-0-failed",
    ]
    assert "config" not in doc["nightly_runs"][1]
    assert doc["nightly_runs"][0]["candidate_jf"] == pytest.approx(0.3124)
    assert [c["checkpoint_id"] for c in doc["checkpoints"]] == [ROOT, A, B]
    assert doc["checkpoints"][2]["parent_jf"] == pytest.approx(0.3146)
    assert doc["checkpoints"][0]["created_at"].startswith("2026-11-20T02:15:00")
    assert doc["promoted"]["checkpoint_id"] == A and "plot" not in doc


def test_plot_is_a_png_and_places_the_root_at_its_childs_parent_jf(
    store: str, tmp_path: Path
) -> None:
    out = tmp_path / "plots" / "history.png"
    text = history_command(store, str(out))
    assert text.endswith(f"wrote {out}")
    assert out.stat().st_size > 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
        image.load()
    _, checkpoints = read_history(store)
    points = plot_points(checkpoints)
    assert points[ROOT][1] == pytest.approx(29.87)  # measured as night a's parent
    assert points[A][1] == pytest.approx(31.24) and points[B][1] == pytest.approx(30.51)
    doc = json.loads(history_command(store, str(tmp_path / "again.png"), as_json=True))
    assert doc["plot"] == str(tmp_path / "again.png") and (tmp_path / "again.png").stat().st_size


def test_checkpoints_without_any_jf_are_left_out_of_the_plot(tmp_path: Path) -> None:
    layout = EngineLayout(str(tmp_path / "store"))
    registry.register(layout, "root", _row(ROOT, None, None, 0.0), None)
    _, checkpoints = read_history(layout.store_uri)
    assert plot_points(checkpoints) == {}
    out = tmp_path / "lonely.png"
    history_command(layout.store_uri, str(out))  # only the root: an empty plot, still a PNG
    with Image.open(out) as image:
        assert image.format == "PNG"


def test_an_empty_store_gives_a_message(tmp_path: Path) -> None:
    uri = str(tmp_path / "nothing-here")
    text = history_command(uri, str(tmp_path / "p.png"))
    assert "no nightly runs and no checkpoints yet" in text and uri in text
    assert "no plot written" in text and not (tmp_path / "p.png").exists()
    doc = json.loads(history_command(uri, None, as_json=True))
    assert doc == {"promoted": None, "nightly_runs": [], "checkpoints": []}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"run_id": "nightly-x", "status": "runn', "not valid JSON"),
        ('{"run_id": "nightly-x", "status": "running"}', "not a valid nightly run record"),
    ],
)
def test_a_corrupt_record_raises_an_error_naming_the_file(
    store: str, content: str, problem: str
) -> None:
    bad = Path(EngineLayout(store).nightly_record_uri("nightly-x"))
    bad.write_text(content)
    with pytest.raises(HistoryError) as info:
        read_history(store)
    assert str(bad) in str(info.value) and problem in str(info.value)


def test_the_cli_prints_the_tables_and_exits_2_on_a_corrupt_store(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "--store", store]) == 0
    assert "*  " + "a" * 16 in capsys.readouterr().out
    Path(EngineLayout(store).promoted_uri).write_text("[1, 2]")
    assert main(["history", "--store", store, "--json"]) == 2
    err = capsys.readouterr().err
    assert "promoted.json" in err and "not a valid promoted pointer" in err
