"""Every table the corpus job reads or writes, defined once: its pyarrow schema beside a row type.

Each table is a :class:`TableSpec`: the schema (with a description on every column, stored in
the Parquet footer too), a frozen row dataclass with the same columns (writers build rows of it
and turn them into a table with :meth:`TableSpec.table`), the sort order files are written in,
and the allowed values of enum-like string columns.

Masks are COCO compressed RLE (pycocotools' ``counts`` string as ASCII bytes, column-major runs
that start with background) of a ``height x width`` mask; see :mod:`pipeline.rle`. ``bbox`` is
``[x, y, w, h]`` in pixels (x = column, y = row, as pycocotools' ``toBbox``), all 0 for an empty
mask.

The JSON documents of the run ledger (:class:`RunPlan`, :class:`SuccessMarker`) are here too;
the layout that holds them is described in :mod:`pipeline.ledger`.

This module imports only pyarrow and pydantic, so configs and readers can use it without torch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from .common import StrictModel

SCHEMA_VERSION = "1"
BBOX_TYPE = pa.list_(pa.float32(), 4)
TIME_TYPE = pa.timestamp("us", tz="UTC")
ERROR_STAGES = ("discover", "read", "decode", "seed", "label", "write")


class TableError(ValueError):
    """A table that does not match its contract, or a file that is not a readable table.

    ``source`` names the file (or the table) and ``problem`` says what is wrong, as in
    ``stm_core.errors.InputError`` (not imported here: importing ``stm_core`` pulls in torch).
    """

    def __init__(self, source: str | None, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(problem if source is None else f"{source}: {problem}")

    def __reduce__(self) -> tuple[type[TableError], tuple[str | None, str]]:
        # As InputError's: the default reduction cannot rebuild a two-argument error.
        return type(self), (self.source, self.problem)


def _col(name: str, type_: pa.DataType, doc: str, *, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"description": doc})


@dataclass(frozen=True)
class TableSpec:
    """One table's contract. ``row_type`` is a frozen dataclass whose fields are the columns,
    in schema order; ``enums`` lists the allowed values of some string columns."""

    name: str
    schema: pa.Schema
    row_type: type
    sort_keys: tuple[str, ...] = ()
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def table(self, rows: Iterable[object]) -> pa.Table:
        """Rows (instances of ``row_type``) -> a table with exactly this schema, unsorted."""
        rows = list(rows)
        for row in rows:
            if not isinstance(row, self.row_type):
                raise TypeError(f"{self.name}: expected {self.row_type.__name__}, got {row!r}")
        columns = {name: [getattr(r, name) for r in rows] for name in self.schema.names}
        return self.check(pa.Table.from_pydict(columns, schema=self.schema), source=self.name)

    def empty(self) -> pa.Table:
        """A table with no rows (an errors file for a shard without errors is still written)."""
        return self.schema.empty_table()

    def sort(self, table: pa.Table) -> pa.Table:
        """``table`` in this table's sort order (stable; a no-op when there are no keys)."""
        if not self.sort_keys or table.num_rows < 2:
            return table
        return table.sort_by([(key, "ascending") for key in self.sort_keys])

    def check(
        self,
        table: pa.Table,
        source: str | None = None,
        *,
        cast: bool = False,
        extra_columns: Literal["error", "drop"] = "error",
    ) -> pa.Table:
        """``table`` conformed to this schema: columns in schema order, schema metadata attached.

        Raises :class:`TableError` naming ``source`` and the column for a missing column, a
        column of another type (unless ``cast`` and a safe cast exists, e.g. int64 -> int32 with
        values in range, large_string -> string as Polars writes), nulls in a non-nullable
        column, a value outside ``enums``, and (with ``extra_columns="error"``) an unknown column.
        """
        source = source or self.name
        expected = {f.name: f for f in self.schema}
        missing = [f"{n!r} ({f.type})" for n, f in expected.items() if n not in table.schema.names]
        if missing:
            raise TableError(source, f"{self.name} table is missing column(s) {', '.join(missing)}")
        extra = [n for n in table.schema.names if n not in expected]
        if extra and extra_columns == "error":
            raise TableError(source, f"{self.name} table has unknown column(s) {extra}")
        duplicated = {n for n in table.schema.names if table.schema.names.count(n) > 1}
        if duplicated:
            raise TableError(source, f"{self.name} table has duplicate column(s) {duplicated}")
        columns = []
        for name, want in expected.items():
            column = table.column(name)
            if not column.type.equals(want.type):
                column = self._cast(column, want, source, cast)
            nulls = column.null_count
            if nulls and not want.nullable:
                first = pc.index(pc.is_null(column), True).as_py()
                raise TableError(
                    source, f"column {name!r} has {nulls} null value(s) (first at row {first})"
                )
            if name in self.enums and len(column):
                bad = pc.filter(column, pc.invert(pc.is_in(column, pa.array(self.enums[name]))))
                if len(bad):
                    raise TableError(
                        source,
                        f"column {name!r} has value {bad[0].as_py()!r}; "
                        f"allowed: {list(self.enums[name])}",
                    )
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _cast(
        self, column: pa.ChunkedArray, want: pa.Field, source: str, cast: bool
    ) -> pa.ChunkedArray:
        problem = f"column {want.name!r} has type {column.type}, expected {want.type}"
        if not cast:
            raise TableError(source, problem)
        try:
            return pc.cast(column, want.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise TableError(source, f"{problem} and cannot be converted: {exc}") from exc


def _table(
    name: str,
    row_type: type,
    columns: Sequence[pa.Field],
    *,
    sort_keys: tuple[str, ...] = (),
    enums: Mapping[str, tuple[str, ...]] | None = None,
) -> TableSpec:
    """The :class:`TableSpec` of table ``name``: its schema carries the name and
    ``SCHEMA_VERSION`` in the metadata. ``row_type``'s fields must be the columns in order; a
    mismatch is a programming error and fails at import."""
    schema = pa.schema(
        columns, metadata={"stm_label.table": name, "stm_label.version": SCHEMA_VERSION}
    )
    names = [f.name for f in dataclasses.fields(row_type)]
    if names != schema.names:
        raise AssertionError(f"{name}: row fields {names} != schema {schema.names}")
    return TableSpec(name, schema, row_type, sort_keys, dict(enums or {}))


def _object_mask_columns(frame_doc: str = "0-based frame position") -> list[pa.Field]:
    """The columns that locate and hold one object's mask on one frame, shared by the seeds,
    corrections and selection tables (the masks table names its video id more precisely)."""
    return [
        _col("video_id", pa.string(), "video id in the corpus"),
        _col("frame_index", pa.int32(), frame_doc),
        _col("object_id", pa.int32(), "object label, >= 1"),
        _col("height", pa.int32(), "mask height in pixels"),
        _col("width", pa.int32(), "mask width in pixels"),
        _col("rle", pa.binary(), "COCO compressed RLE counts (pycocotools), ASCII"),
    ]


# --- masks ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaskRow:
    """One (run, video, frame, object). An object absent from a frame still has a row: an
    empty mask, ``area`` 0, ``bbox`` all 0.

    ``score`` is the mean foreground probability of the object over the pixels of its mask, in
    [0, 1] (how sure the model was of what it labelled); 0 when the mask is empty; exactly 1 for
    seed rows (``is_seed``), which copy the user's mask.
    """

    run_id: str
    video_id: str
    frame_index: int  # 0-based position in the video's frame order
    frame_name: str  # file stem for frame folders ("00005"), zero-padded index for video files
    object_id: int  # label value in the seed masks (1..255); 0 (background) never has a row
    height: int  # pixels
    width: int
    rle: bytes  # COCO compressed RLE counts
    area: int  # foreground pixels
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    score: float
    is_seed: bool
    checkpoint_id: str


MASKS = _table(
    "masks",
    MaskRow,
    [
        _col("run_id", pa.string(), "labeling run that wrote the row"),
        _col("video_id", pa.string(), "video id (folder or file stem) in the corpus"),
        _col("frame_index", pa.int32(), "0-based frame position in the video"),
        _col("frame_name", pa.string(), "frame file stem, or zero-padded index"),
        _col("object_id", pa.int32(), "object label as in the seed masks, >= 1"),
        _col("height", pa.int32(), "mask height in pixels"),
        _col("width", pa.int32(), "mask width in pixels"),
        _col("rle", pa.binary(), "COCO compressed RLE counts (pycocotools), ASCII"),
        _col("area", pa.int64(), "foreground pixel count; 0 if the object is absent"),
        _col("bbox", BBOX_TYPE, "[x, y, w, h] in pixels; zeros for an empty mask"),
        _col("score", pa.float32(), "mean fg probability inside the mask; 1 for seeds"),
        _col("is_seed", pa.bool_(), "true when the mask is the user's seed"),
        _col("checkpoint_id", pa.string(), "id of the model checkpoint used"),
    ],
    sort_keys=("video_id", "frame_index", "object_id"),
)


def checkpoint_id_of(data: bytes) -> str:
    """``sha256:<16 hex>`` of a model file's bytes: the ``checkpoint_id`` of the masks rows it
    labels and of its checkpoints row, the same wherever the file is stored."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


# --- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """Something that went wrong without stopping the run. ``video_id`` is None when no single
    video is to blame (e.g. listing the corpus failed). ``stage`` is one of ``ERROR_STAGES``;
    ``error_type`` is the exception class name for a video that failed while being labeled
    (``InputError``, ...), and a problem code for what discovery found before any labeling
    (``no_seeds``, ``empty_file``, ``unreadable_uri``, ...; see ``pipeline.corpus.tasks``)."""

    run_id: str
    video_id: str | None
    stage: str
    error_type: str
    message: str
    time: dt.datetime  # timezone-aware, UTC


ERRORS = _table(
    "errors",
    ErrorRow,
    [
        _col("run_id", pa.string(), "labeling run"),
        _col("video_id", pa.string(), "video concerned, null if none", nullable=True),
        _col("stage", pa.string(), "one of " + "/".join(ERROR_STAGES)),
        _col("error_type", pa.string(), "exception class name, or a discovery problem code"),
        _col("message", pa.string(), "error message"),
        _col("time", TIME_TYPE, "when the error happened (UTC)"),
    ],
    sort_keys=("video_id", "stage", "time"),
    enums={"stage": ERROR_STAGES},
)

# --- seeds ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ObjectMask:
    """The row fields of :func:`_object_mask_columns`: one object's mask on one frame. Seeds and
    corrections rows start with them; a selection row lists them itself, after its id."""

    video_id: str
    frame_index: int
    object_id: int
    height: int
    width: int
    rle: bytes  # COCO compressed RLE counts, as in masks


@dataclass(frozen=True, slots=True)
class SeedRow(_ObjectMask):
    """A user-supplied seed mask (Parquet seed table): the object's mask on one frame."""


SEEDS = _table(
    "seeds",
    SeedRow,
    _object_mask_columns("0-based frame position of the seed"),
    sort_keys=("video_id", "frame_index", "object_id"),
)

# --- corrections ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorrectionRow(_ObjectMask):
    """A human correction of one (video, frame, object) mask, used as training data."""

    author: str
    time: dt.datetime  # timezone-aware, UTC


CORRECTIONS = _table(
    "corrections",
    CorrectionRow,
    [
        *_object_mask_columns(),
        _col("author", pa.string(), "who made the correction"),
        _col("time", TIME_TYPE, "when it was made (UTC)"),
    ],
    sort_keys=("video_id", "frame_index", "object_id", "time"),
)

MASKS_SCHEMA = MASKS.schema
ERRORS_SCHEMA = ERRORS.schema
SEEDS_SCHEMA = SEEDS.schema
CORRECTIONS_SCHEMA = CORRECTIONS.schema
TABLES: dict[str, TableSpec] = {s.name: s for s in (MASKS, ERRORS, SEEDS, CORRECTIONS)}

# The hive partition key of the masks and errors folders (``run_id=<id>``). It is also a column
# inside every file, so readers that infer partition types (a run id "20261126" looks like an
# integer) still get strings; pass this to ``pyarrow.dataset.partitioning`` to be explicit.
RUN_PARTITION_SCHEMA = pa.schema([pa.field("run_id", pa.string())])


# --- run ledger documents -------------------------------------------------------------------


class ShardPlan(StrictModel):
    """One shard: its name (``shard-00007``) and the videos it labels, sorted."""

    name: str = Field(pattern=r"^shard-\d{5,}$")
    video_ids: list[str] = Field(min_length=1)


class RunPlan(StrictModel):
    """The shard assignment of one run (``runs/<id>/plan.json``). Saved on the first attempt and
    reused by every resume, so the same video always lands in the same shard file."""

    run_id: str
    videos_per_shard: int = Field(ge=1)
    shards: list[ShardPlan]
    created_at: dt.datetime
    # video id -> fingerprint of its listed inputs (pipeline.corpus.fingerprint): what the
    # data engine compares to decide that a video changed since it was labeled
    fingerprints: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> RunPlan:
        for index, shard in enumerate(self.shards):
            if shard.name != f"shard-{index:05d}":
                raise ValueError(f"shard {index} is named {shard.name!r}, not shard-{index:05d}")
        seen: set[str] = set()
        for shard in self.shards:
            twice = seen.intersection(shard.video_ids)
            if twice or len(set(shard.video_ids)) != len(shard.video_ids):
                raise ValueError(f"video(s) planned twice: {sorted(twice) or shard.video_ids}")
            seen.update(shard.video_ids)
        return self

    @property
    def shard_names(self) -> list[str]:
        return [s.name for s in self.shards]

    @property
    def video_ids(self) -> list[str]:
        return [v for s in self.shards for v in s.video_ids]


class SuccessMarker(StrictModel):
    """Content of ``runs/<id>/_SUCCESS``: written last, after every shard and the run record."""

    run_id: str
    shards: int = Field(ge=0)
    committed_at: dt.datetime


# --- the data engine: training-data selections and the checkpoint registry ------------------

SELECTION_SOURCES = ("seed", "correction", "pseudo")


@dataclass(frozen=True, slots=True)
class SelectionRow:
    """One (video, frame, object) mask chosen as training data by a nightly run. The mask is
    copied in, so a selection stays reproducible after its labeling runs are superseded.

    ``source``: ``seed`` (the user's seed mask), ``correction`` (a human correction, newest per
    frame and object) or ``pseudo`` (a labeled mask that passed the confidence filter).
    ``consistency`` is the smaller IoU of the mask with the same object's mask on the previous
    and next frames (1 for seeds and corrections)."""

    selection_id: str
    video_id: str
    frame_index: int
    object_id: int
    height: int
    width: int
    rle: bytes
    source: str
    run_id: str | None  # the labeling run of a seed or pseudo row; None for corrections
    score: float
    consistency: float


SELECTION = _table(
    "selection",
    SelectionRow,
    [
        _col("selection_id", pa.string(), "nightly run that made the selection"),
        *_object_mask_columns(),
        _col("source", pa.string(), "one of " + "/".join(SELECTION_SOURCES)),
        _col(
            "run_id",
            pa.string(),
            "labeling run of the mask; null for corrections",
            nullable=True,
        ),
        _col("score", pa.float32(), "the mask's score; 1 for seeds and corrections"),
        _col("consistency", pa.float32(), "min IoU with the neighbouring frames' masks"),
    ],
    sort_keys=("video_id", "frame_index", "object_id"),
    enums={"source": SELECTION_SOURCES},
)


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """One model checkpoint known to the data engine, written once when it is registered.

    The root (the model the engine started from) has no parent. ``jf``/``parent_jf`` are the
    held-out J&F (fractions in [0, 1]) of this checkpoint and of its parent, measured together by
    the gate of the nightly run that trained it; ``promoted`` says whether the gate promoted it
    and ``reason`` why (or why not)."""

    checkpoint_id: str  # sha256:<16 hex> of the model file, as in masks.checkpoint_id
    parent_id: str | None
    uri: str
    nightly_run_id: str | None
    selection_id: str | None
    selected_masks: int
    train_steps: int
    heldout_uri: str | None
    jf: float | None
    j: float | None
    f: float | None
    parent_jf: float | None
    promoted: bool
    reason: str
    created_at: dt.datetime


CHECKPOINTS = _table(
    "checkpoints",
    CheckpointRow,
    [
        _col("checkpoint_id", pa.string(), "sha256:<16 hex> of the model file"),
        _col("parent_id", pa.string(), "checkpoint it was fine-tuned from", nullable=True),
        _col("uri", pa.string(), "where the model file is"),
        _col("nightly_run_id", pa.string(), "nightly run that made it", nullable=True),
        _col("selection_id", pa.string(), "training data selection", nullable=True),
        _col("selected_masks", pa.int64(), "rows in that selection"),
        _col("train_steps", pa.int32(), "fine-tuning steps"),
        _col("heldout_uri", pa.string(), "held-out ground truth of the gate", nullable=True),
        _col("jf", pa.float64(), "held-out J&F in [0, 1]", nullable=True),
        _col("j", pa.float64(), "held-out J (region) mean", nullable=True),
        _col("f", pa.float64(), "held-out F (boundary) mean", nullable=True),
        _col("parent_jf", pa.float64(), "parent's J&F in the same gate", nullable=True),
        _col("promoted", pa.bool_(), "whether the gate promoted it"),
        _col("reason", pa.string(), "why it was (not) promoted"),
        _col("created_at", TIME_TYPE, "when it was registered (UTC)"),
    ],
    sort_keys=("created_at", "checkpoint_id"),
)

SELECTION_SCHEMA = SELECTION.schema
CHECKPOINTS_SCHEMA = CHECKPOINTS.schema
TABLES.update({SELECTION.name: SELECTION, CHECKPOINTS.name: CHECKPOINTS})
