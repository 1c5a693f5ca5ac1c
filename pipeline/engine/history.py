"""What the data engine did, night by night: ``stm-label history --store URI``.

Reads the nightly run records (``nightly/<id>.json``), the checkpoint registry and the promoted
pointer of a store, and shows them as two text tables, as JSON, or as a plot of held-out J&F per
checkpoint over time. Read-only: it takes no lock, so it can watch a store while a nightly run
works on it (a record being rewritten is replaced atomically, never seen half-written).

J&F values are stored as fractions in [0, 1]; everything shown here is in percent, as the README
and the gate's margin use them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from pipeline import table_io
from schemas.common import StorageOptions
from schemas.nightly import NightlyRecord, PromotedPointer
from schemas.tables import TableError
from stm_core.errors import InputError

from . import registry
from .layout import EngineLayout

REASON_WIDTH = 60
NO_VALUE = "-"


class HistoryError(InputError):
    """A store whose history cannot be read: a nightly record, registry file or pointer that is
    not what it should be. The message names the file."""


# --- reading --------------------------------------------------------------------------------


def read_history(
    store_uri: str, options: StorageOptions | None = None
) -> tuple[list[NightlyRecord], pa.Table]:
    """Every nightly run record of the store, oldest start first, and the checkpoints table
    (:data:`schemas.tables.CHECKPOINTS`, oldest first). Both are empty for a store the engine
    never ran on. A record that is not valid JSON or not a valid :class:`NightlyRecord` raises
    :class:`HistoryError` naming its file: a history that silently skips a night would lie."""
    layout = EngineLayout(store_uri)
    records = []
    for uri in table_io.list_files(layout.nightly_dir, options, suffix=".json"):
        try:
            raw = table_io.read_json(uri, options)
        except TableError as exc:
            raise HistoryError(exc.source, exc.problem) from None
        except FileNotFoundError:
            raise HistoryError(uri, "nightly record vanished while reading the history") from None
        try:
            records.append(NightlyRecord.model_validate(raw))
        except ValidationError as exc:
            raise HistoryError(uri, f"not a valid nightly run record: {exc}") from None
    records.sort(key=lambda r: (r.started_at, r.run_id))
    try:
        checkpoints = registry.read_registry(layout, options)
    except TableError as exc:
        raise HistoryError(exc.source, exc.problem) from None
    return records, checkpoints


def read_pointer(store_uri: str, options: StorageOptions | None = None) -> PromotedPointer | None:
    """The promoted pointer of the store (None if there is none), errors naming the file."""
    try:
        return registry.read_promoted(EngineLayout(store_uri), options)
    except TableError as exc:
        raise HistoryError(exc.source, exc.problem) from None


# --- text tables ----------------------------------------------------------------------------


def format_history(
    records: Sequence[NightlyRecord],
    checkpoints: pa.Table,
    promoted_id: str | None = None,
) -> str:
    """Two fixed-width tables: the nightly runs, then the checkpoints, ``*`` marking
    ``promoted_id`` (the checkpoint the promoted pointer names). Ids are shown without their
    ``sha256:`` prefix; J&F in percent with one decimal; ``-`` where there is no value."""
    return "\n".join(
        [
            f"nightly runs ({len(records)})",
            _nightly_table(records) if records else "  none",
            "",
            f"checkpoints ({checkpoints.num_rows})",
            _checkpoint_table(checkpoints, promoted_id) if checkpoints.num_rows else "  none",
        ]
    )


def _nightly_table(records: Sequence[NightlyRecord]) -> str:
    headers = [
        "run id",
        "status",
        "started (UTC)",
        "videos",
        "masks",
        "candidate",
        "J&F %",
        "parent %",
        "promoted",
        "reason",
    ]
    rows = [
        [
            r.run_id,
            r.status,
            _time(r.started_at),
            _count(r.videos_labeled),
            _count(r.selected_masks),
            _short_id(r.candidate_id),
            _percent(r.candidate_jf),
            _percent(r.parent_jf),
            _yes_no(r.promoted),
            _shorten(r.reason or (f"error: {r.error}" if r.error else NO_VALUE)),
        ]
        for r in records
    ]
    return _table(headers, rows, right={3, 4, 6, 7})


def _checkpoint_table(checkpoints: pa.Table, promoted_id: str | None) -> str:
    headers = ["", "checkpoint", "parent", "nightly run", "created (UTC)", "J&F %", "promoted"]
    rows = [
        [
            "*" if row["checkpoint_id"] == promoted_id else "",
            _short_id(row["checkpoint_id"]),
            _short_id(row["parent_id"]),
            row["nightly_run_id"] or NO_VALUE,
            _time(row["created_at"]),
            _percent(row["jf"]),
            _yes_no(row["promoted"]),
        ]
        for row in checkpoints.to_pylist()
    ]
    table = _table(headers, rows, right={5})
    if promoted_id is not None:
        table += "\n* = the promoted checkpoint (checkpoints/promoted.json)"
        if promoted_id not in checkpoints.column("checkpoint_id").to_pylist():
            table += f"; it names {promoted_id}, which is not in the registry"
    return table


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _short_id(checkpoint_id: str | None) -> str:
    return checkpoint_id.removeprefix("sha256:") if checkpoint_id else NO_VALUE


def _percent(fraction: float | None) -> str:
    return NO_VALUE if fraction is None else f"{100 * fraction:.1f}"


def _count(value: int | None) -> str:
    return NO_VALUE if value is None else f"{value:,}"


def _yes_no(value: bool | None) -> str:
    return NO_VALUE if value is None else ("yes" if value else "no")


def _time(value: dt.datetime | None) -> str:
    if value is None:
        return NO_VALUE
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return f"{value:%Y-%m-%d %H:%M}"


def _shorten(text: str, width: int = REASON_WIDTH) -> str:
    text = " ".join(text.split())  # one line, whatever the message held
    return text if len(text) <= width else text[: width - 3] + "..."


# --- plot -----------------------------------------------------------------------------------


def plot_points(checkpoints: pa.Table) -> dict[str, tuple[dt.datetime, float]]:
    """Where each checkpoint is drawn: ``{checkpoint_id: (created_at, J&F in percent)}``.

    A checkpoint's own held-out J&F (``jf``) when it has one. Checkpoints without one (the root,
    which no gate has measured on its own) are drawn at the ``parent_jf`` of their first child
    that has one, i.e. the score the gate measured for them when it compared them with that
    child; a checkpoint with neither is left out of the plot (it still is in the tables)."""
    rows = checkpoints.to_pylist()
    measured_as_parent: dict[str, float] = {}
    for row in rows:  # oldest first: the first child wins
        if row["parent_id"] is not None and row["parent_jf"] is not None:
            measured_as_parent.setdefault(row["parent_id"], row["parent_jf"])
    points = {}
    for row in rows:
        jf = row["jf"] if row["jf"] is not None else measured_as_parent.get(row["checkpoint_id"])
        if jf is not None:
            points[row["checkpoint_id"]] = (row["created_at"], 100 * jf)
    return points


def plot_history(
    checkpoints: pa.Table,
    promoted_id: str | None,
    path: str | Path,
    *,
    store_uri: str | None = None,
) -> Path:
    """A PNG of held-out J&F (percent) per checkpoint over time (x = ``created_at``).

    Promoted checkpoints are filled circles joined by a line (the model labeling used, night by
    night), rejected candidates hollow circles, the current promoted one (``promoted_id``) a
    star; a thin grey line runs from each parent's point to its child's. Points are labelled
    with the nightly run that made them (only the promoted ones beyond 20 points). Where a
    checkpoint without a J&F of its own is drawn: see :func:`plot_points`. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    points = plot_points(checkpoints)
    rows = sorted(
        (r for r in checkpoints.to_pylist() if r["checkpoint_id"] in points),
        key=lambda r: (r["created_at"], r["checkpoint_id"]),
    )
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    edge_label = "parent -> child"
    for row in rows:
        parent = points.get(row["parent_id"]) if row["parent_id"] else None
        if parent is not None:
            child = points[row["checkpoint_id"]]
            ax.plot(
                [parent[0], child[0]],
                [parent[1], child[1]],
                color="0.6",
                linewidth=0.7,
                zorder=1,
                label=edge_label,
            )
            edge_label = "_nolegend_"  # one legend entry for all of them
    promoted = [points[r["checkpoint_id"]] for r in rows if r["promoted"]]
    rejected = [points[r["checkpoint_id"]] for r in rows if not r["promoted"]]
    if promoted:
        xs, ys = zip(*promoted, strict=True)
        ax.plot(xs, ys, color="tab:blue", linewidth=1.5, zorder=2, label="promoted line")
        ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3, label="promoted")
    if rejected:
        xs, ys = zip(*rejected, strict=True)
        ax.scatter(
            xs, ys, s=40, facecolors="none", edgecolors="tab:red", zorder=3, label="rejected"
        )
    if promoted_id in points:
        x, y = points[promoted_id]
        ax.scatter(
            [x],
            [y],
            s=260,
            marker="*",
            color="gold",
            edgecolors="black",
            zorder=4,
            label="current promoted",
        )
    labelled = rows if len(rows) <= 20 else [r for r in rows if r["promoted"]]
    for row in labelled:
        x, y = points[row["checkpoint_id"]]
        label = row["nightly_run_id"] or "root"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)
    if not rows:
        ax.text(
            0.5,
            0.5,
            "no checkpoint has a held-out J&F yet",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    else:
        ax.legend(loc="best", fontsize=8)
        fig.autofmt_xdate()
    ax.set_xlabel("registered (UTC)")
    ax.set_ylabel("held-out J&F (%)")
    ax.set_title(f"held-out J&F per checkpoint: {store_uri}" if store_uri else "held-out J&F")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# --- the command ----------------------------------------------------------------------------


def history_command(
    store_uri: str,
    plot: str | None,
    options: StorageOptions | None = None,
    as_json: bool = False,
) -> str:
    """What ``stm-label history --store URI [--plot FILE.png] [--json]`` prints: the two tables
    (or one JSON document with ``nightly_runs``, ``checkpoints`` and ``promoted``), after
    writing the plot when ``plot`` names a file. A store without any history gives a message
    (or JSON with empty lists), not an error; no plot is written then."""
    records, checkpoints = read_history(store_uri, options)
    pointer = read_pointer(store_uri, options)
    promoted_id = pointer.checkpoint_id if pointer else None
    empty = not records and checkpoints.num_rows == 0 and pointer is None
    plot_path = None
    if plot and not empty:
        plot_path = plot_history(checkpoints, promoted_id, plot, store_uri=store_uri)
    if as_json:
        return json.dumps(
            history_json(records, checkpoints, pointer, plot_path), indent=2, allow_nan=False
        )
    if empty:
        text = (
            f"{store_uri}: no nightly runs and no checkpoints yet (nothing in its nightly/ "
            "or checkpoints/ folders); a nightly run (jobs/nightly.py) on this store makes them"
        )
        return text + ("; no plot written" if plot else "")
    text = format_history(records, checkpoints, promoted_id)
    return text + (f"\n\nwrote {plot_path}" if plot_path else "")


def history_json(
    records: Sequence[NightlyRecord],
    checkpoints: pa.Table,
    pointer: PromotedPointer | None,
    plot_path: Path | None = None,
) -> dict[str, Any]:
    """The history as JSON-able data. Values are as stored (J&F fractions in [0, 1], times in
    ISO 8601 UTC); each record's ``config`` is left out (see ``nightly/<id>.json``)."""
    out: dict[str, Any] = {
        "promoted": None if pointer is None else pointer.model_dump(mode="json"),
        "nightly_runs": [
            r.model_dump(mode="json", exclude={"config", "label_video_ids"}) for r in records
        ],
        "checkpoints": to_jsonable_python(checkpoints.to_pylist()),
    }
    if plot_path is not None:
        out["plot"] = str(plot_path)
    return out
