"""Read back what a labeling run wrote: its record, its plan and its masks, one video at a time.

A run is named by ``<output_uri>/runs/<run_id>`` (the folder beside ``runs/<run_id>.json``; a
trailing ``/`` or the ``.json`` record's own URI are accepted too), so the URI a user copies out of
a listing of ``runs/`` is enough. :func:`open_run` checks the run is committed (its
``runs/<id>/_SUCCESS`` exists): an uncommitted run may still be writing shards, or have failed
half way, and exporting it would silently miss videos. ``allow_incomplete=True`` reads whatever
shards are finished (a shard's masks file exists only once it is finished; see
:mod:`pipeline.ledger`).

Masks are read one shard file at a time (a few MB of compressed RLE), never the whole run: the
plan says which shard holds a video, so asking for one video reads one file. Per frame, the
objects' masks are merged into one ``H x W`` uint8 label map (0 = background, k = object k);
objects are painted in ascending id order, so if two masks overlap (propagation never produces
that: each pixel goes to one object) the larger id wins and a warning is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import ledger, rle, table_io
from pipeline.corpus import VideoTask, discover, fingerprint, iter_frames
from pipeline.storage import open_fs
from schemas.common import StorageOptions
from schemas.tables import MASKS, RunPlan, TableError
from stm_core.errors import InputError

__all__ = [
    "FrameLabels",
    "LabelRun",
    "RunCorpus",
    "RunIncompleteError",
    "RunNotFoundError",
    "UnknownVideoError",
    "VideoMasks",
    "open_run",
    "parse_run_uri",
]

logger = logging.getLogger(__name__)

KNOWN_IDS_SHOWN = 5  # how many known video ids an "unknown video" message lists


class RunNotFoundError(InputError):
    """Nothing of the named run exists: no record, no plan, no commit marker."""


class RunIncompleteError(InputError):
    """The run is not committed (no ``_SUCCESS``) and the caller did not allow that."""


class UnknownVideoError(InputError):
    """A video id the run did not plan, or planned but wrote no masks for."""


def parse_run_uri(uri: str) -> ledger.RunLayout:
    """``<output_uri>/runs/<run_id>`` (or ``.../runs/<run_id>.json``) -> the run's layout.

    Pure string work. Raises :class:`~stm_core.errors.InputError` naming ``uri`` when it does
    not end in ``runs/<run_id>`` or the run id is not a valid one.
    """
    text = uri.strip().rstrip("/")
    text = text.removesuffix(".json")
    parts = text.rsplit("/", 2)
    if len(parts) == 2:  # "runs/<id>" relative to the current folder
        parts = [".", *parts]
    if len(parts) != 3 or parts[1] != "runs" or not parts[2]:
        raise InputError(uri, "a run is named <output_uri>/runs/<run_id>, e.g. out/runs/demo")
    output_uri = parts[0] or "/"
    try:
        return ledger.RunLayout(output_uri, parts[2])
    except ValueError as exc:
        raise InputError(uri, str(exc)) from None


@dataclass(frozen=True)
class FrameLabels:
    """One frame of one video: its position, its name and its label map.

    ``labels`` is ``H x W`` uint8, 0 = background, k = object k. ``object_ids`` are the objects
    with rows on this frame (present or not: an absent object has an empty mask).
    """

    frame_index: int
    frame_name: str
    labels: np.ndarray
    object_ids: tuple[int, ...]


@dataclass
class VideoMasks:
    """All mask rows of one video (a MASKS table sorted by frame, then object) and ways to read
    them per frame. ``source`` names the shard file, for error messages."""

    video_id: str
    rows: pa.Table
    source: str
    height: int = field(init=False)
    width: int = field(init=False)
    _frame_starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rows.num_rows == 0:
            raise UnknownVideoError(self.source, f"video {self.video_id!r} has no mask rows")
        self.rows = self.rows.sort_by([("frame_index", "ascending"), ("object_id", "ascending")])
        sizes = {
            (h, w)
            for h, w in zip(
                self.rows["height"].to_pylist(), self.rows["width"].to_pylist(), strict=True
            )
        }
        if len(sizes) != 1:
            raise InputError(
                self.source, f"video {self.video_id!r} has masks of several sizes: {sorted(sizes)}"
            )
        self.height, self.width = sizes.pop()
        frames = self.rows["frame_index"].to_numpy()
        objects = self.rows["object_id"].to_numpy()
        same = (frames[1:] == frames[:-1]) & (objects[1:] == objects[:-1])
        if same.any():
            at = int(np.flatnonzero(same)[0]) + 1
            raise InputError(
                self.source,
                f"video {self.video_id!r} has two rows for frame {int(frames[at])}, "
                f"object {int(objects[at])}",
            )
        self._frame_starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])

    @property
    def num_frames(self) -> int:
        """Frames that have rows (every frame the labeling pass decoded)."""
        return int(self._frame_starts.size)

    @property
    def frame_indices(self) -> list[int]:
        """The frame indices that have rows, ascending."""
        return self.rows["frame_index"].to_numpy()[self._frame_starts].tolist()

    @property
    def frame_names(self) -> list[str]:
        """The stored name of each frame in :attr:`frame_indices`, in the same order."""
        names = self.rows["frame_name"].to_pylist()
        return [names[i] for i in self._frame_starts.tolist()]

    @property
    def object_ids(self) -> list[int]:
        """Every object id of the video, ascending."""
        return sorted(set(self.rows["object_id"].to_pylist()))

    def iter_frame_rows(self) -> Iterator[list[dict[str, Any]]]:
        """Per frame (ascending), the frame's rows as dicts of the MASKS columns, by object id."""
        ends = np.r_[self._frame_starts[1:], self.rows.num_rows]
        for start, end in zip(self._frame_starts.tolist(), ends.tolist(), strict=True):
            yield self.rows.slice(start, end - start).to_pylist()

    def iter_frames(self) -> Iterator[FrameLabels]:
        """The label map of every frame with rows, in frame order (decoded one frame at a time)."""
        for rows in self.iter_frame_rows():
            yield self._merge(rows)

    def label_map(self, frame_index: int) -> FrameLabels:
        """The label map of one frame; :class:`UnknownVideoError` if it has no rows."""
        indices = self.rows["frame_index"].to_numpy()[self._frame_starts]
        at = int(np.searchsorted(indices, frame_index))
        if at >= indices.size or indices[at] != frame_index:
            raise UnknownVideoError(
                self.source, f"video {self.video_id!r} has no masks on frame {frame_index}"
            )
        start = int(self._frame_starts[at])
        end = int(self._frame_starts[at + 1]) if at + 1 < indices.size else self.rows.num_rows
        return self._merge(self.rows.slice(start, end - start).to_pylist())

    def _merge(self, rows: list[dict[str, Any]]) -> FrameLabels:
        labels = np.zeros((self.height, self.width), dtype=np.uint8)
        for row in rows:  # ascending object id: a larger id wins an overlap
            if row["area"] == 0:
                continue
            try:
                mask = rle.decode(row["rle"], self.height, self.width)
            except ValueError as exc:
                raise InputError(
                    self.source,
                    f"video {self.video_id!r} frame {row['frame_index']} object "
                    f"{row['object_id']}: bad RLE ({exc})",
                ) from None
            if (labels[mask] != 0).any():
                logger.warning(
                    "%s: video %r frame %d: object %d overlaps another object; it wins",
                    self.source,
                    self.video_id,
                    row["frame_index"],
                    row["object_id"],
                )
            labels[mask] = row["object_id"]
        return FrameLabels(
            frame_index=int(rows[0]["frame_index"]),
            frame_name=str(rows[0]["frame_name"]),
            labels=labels,
            object_ids=tuple(int(r["object_id"]) for r in rows),
        )


@dataclass
class LabelRun:
    """An opened run: where it is, its record (None before commit) and plan, and its shards."""

    layout: ledger.RunLayout
    record: dict[str, Any] | None
    plan: RunPlan | None
    committed: bool
    options: StorageOptions = field(default_factory=StorageOptions)

    @property
    def run_id(self) -> str:
        return self.layout.run_id

    @property
    def config(self) -> dict[str, Any]:
        """The labeling config saved in the run record (corpus_uri, seeds_uri, storage, ...)."""
        if self.record is None:
            raise InputError(
                self.layout.record_uri,
                f"run {self.run_id!r} has no run record yet, so its corpus and settings are "
                "unknown (the record is written when the run commits)",
            )
        config = self.record.get("config")
        if not isinstance(config, dict):
            raise InputError(self.layout.record_uri, "run record has no 'config' section")
        return config

    def corpus_options(self) -> StorageOptions:
        """How to read the run's corpus: the store settings the run was opened with (a
        command's ``--storage-*`` flags or ``--config``), and for each key they leave unset the
        run record's ``storage`` (which holds no credentials)."""
        recorded = StorageOptions.model_validate(self.config.get("storage") or {})
        given = {key: getattr(self.options, key) for key in self.options.model_fields_set}
        return recorded.model_copy(update=given)

    def shard_files(self) -> list[str]:
        """URIs of the finished shards' masks files, sorted."""
        files = table_io.list_files(self.layout.masks_dir, self.options, suffix=".parquet")
        return [f for f in files if ledger.SHARD_PATTERN.match(_stem(f))]

    def video_ids(self) -> list[str]:
        """Ids of the videos that have masks in this run, sorted (reads the id column only)."""
        ids: set[str] = set()
        for uri in self.shard_files():
            column = self._read(uri, columns=["video_id"])["video_id"]
            ids.update(pc.unique(column).to_pylist())
        return sorted(ids)

    def video(self, video_id: str) -> VideoMasks:
        """One video's masks (reads only the shard that holds it when the run has a plan)."""
        return next(self.iter_videos([video_id]))

    def iter_videos(self, video_ids: Iterable[str] | None = None) -> Iterator[VideoMasks]:
        """The masks of ``video_ids`` (default: every video with masks), shard by shard, sorted
        by video id within a shard. Unknown ids raise before anything is yielded."""
        if video_ids is None:
            for uri in self.shard_files():
                yield from self._videos_in(uri, None)
            return
        wanted = list(dict.fromkeys(video_ids))
        by_shard = self._locate(wanted)
        for uri in sorted(by_shard):
            found = list(self._videos_in(uri, set(by_shard[uri])))
            missing = sorted(set(by_shard[uri]) - {v.video_id for v in found})
            if missing:
                raise UnknownVideoError(
                    uri,
                    f"video(s) {missing} have no masks in run {self.run_id!r}: labeling them "
                    f"failed (see {self.layout.errors_dir})",
                )
            yield from found

    def _locate(self, video_ids: list[str]) -> dict[str, list[str]]:
        """Masks file -> the wanted videos it holds, from the plan (else by reading ids)."""
        if self.plan is not None:
            shard_of = {v: s.name for s in self.plan.shards for v in s.video_ids}
            known = sorted(shard_of)
        else:
            shard_of = {}
            for uri in self.shard_files():
                ids = self._read(uri, columns=["video_id"])["video_id"]
                shard_of.update({v: _stem(uri) for v in pc.unique(ids).to_pylist()})
            known = sorted(shard_of)
        unknown = [v for v in video_ids if v not in shard_of]
        if unknown:
            shown = ", ".join(repr(v) for v in known[:KNOWN_IDS_SHOWN])
            more = (
                f" and {len(known) - KNOWN_IDS_SHOWN} more" if len(known) > KNOWN_IDS_SHOWN else ""
            )
            raise UnknownVideoError(
                self.layout.plan_uri if self.plan else self.layout.masks_dir,
                f"run {self.run_id!r} has no video {unknown[0]!r}; "
                f"its {len(known)} video(s) are {shown or 'none'}{more}",
            )
        finished = set(self.shard_files())
        by_shard: dict[str, list[str]] = {}
        for video_id in video_ids:
            uri = self.layout.masks_file(shard_of[video_id])
            if uri not in finished:
                raise UnknownVideoError(
                    uri,
                    f"video {video_id!r} is in shard {shard_of[video_id]}, which is not "
                    "finished: the run is incomplete",
                )
            by_shard.setdefault(uri, []).append(video_id)
        return by_shard

    def _videos_in(self, uri: str, wanted: set[str] | None) -> Iterator[VideoMasks]:
        table = self._read(uri)
        if wanted is not None:
            table = table.filter(pc.is_in(table["video_id"], pa.array(sorted(wanted))))
        ids = table["video_id"].to_numpy(zero_copy_only=False)
        if ids.size == 0:
            return
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        table = table.take(pa.array(order))
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        ends = np.r_[starts[1:], ids.size]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            yield VideoMasks(str(ids[start]), table.slice(start, end - start), uri)

    def _read(self, uri: str, columns: list[str] | None = None) -> pa.Table:
        try:
            table = table_io.read_table(uri, self.options, columns=columns)
            if columns is None:
                table = MASKS.check(table, uri, cast=True)
        except TableError as exc:
            raise InputError(exc.source, exc.problem) from None
        except FileNotFoundError:
            raise InputError(uri, "masks file vanished while reading the run") from None
        return table


@dataclass(frozen=True)
class RunCorpus:
    """The corpus a run labelled, listed once: each video's task, why a video is not listed,
    and the store settings to read it. Export (``--with-frames``), preview and the training
    datasets read a run's frames through it, so a video that is gone fails the same way in each.
    """

    corpus_uri: str
    run_id: str
    tasks: dict[str, VideoTask]
    why_missing: dict[str | None, str]  # discovery's message per video (None: the corpus's own)
    fingerprints: dict[str, str]  # what the run recorded of each video's inputs (its plan)
    options: StorageOptions

    @classmethod
    def of_run(cls, run: LabelRun) -> RunCorpus:
        """Discover the corpus named in the run record, with :meth:`LabelRun.corpus_options`."""
        config = run.config
        corpus_uri = config.get("corpus_uri")
        if not corpus_uri:
            raise InputError(run.layout.record_uri, "run config has no corpus_uri")
        options = run.corpus_options()
        found = discover(
            corpus_uri, options, config.get("seeds_uri"), config.get("seeds_format") or "auto"
        )
        return cls(
            corpus_uri,
            run.run_id,
            {t.video_id: t for t in found.tasks},
            {e.video_id: e.message for e in reversed(found.errors)},
            dict(run.plan.fingerprints) if run.plan else {},
            options,
        )

    def task(self, video_id: str) -> VideoTask:
        """The corpus's task of ``video_id``: InputError naming the corpus (with discovery's
        reason) when it no longer lists the video; a warning when its inputs differ from those
        the run recorded (re-encoded in place is fine; replaced frames fail the size checks of
        whoever reads them)."""
        task = self._listed(video_id)
        recorded = self.fingerprints.get(video_id)
        if recorded and recorded != fingerprint(task):
            logger.warning(
                "%s: video %r changed since run %s labelled it (its files or sizes differ)",
                self.corpus_uri,
                video_id,
                self.run_id,
            )
        return task

    def frames(
        self, video_id: str, expected_size: tuple[int, int] | None = None
    ) -> Iterator[np.ndarray]:
        """``video_id``'s frames at their native size, streamed (``expected_size``: the masks'
        ``(height, width)``, checked on every frame). Callers check the video with
        :meth:`task` first, which warns once if it changed; this does not warn again."""
        task = self._listed(video_id)
        fs, _ = open_fs(task.uri, self.options)
        return iter_frames(task, fs, expected_size=expected_size)

    def _listed(self, video_id: str) -> VideoTask:
        task = self.tasks.get(video_id)
        if task is None:
            why = self.why_missing.get(video_id) or self.why_missing.get(None)
            raise InputError(
                self.corpus_uri,
                f"cannot read the frames of video {video_id!r}: the corpus no longer lists it"
                + (f" ({why})" if why else ""),
            )
        return task


def _stem(uri: str) -> str:
    return uri.rsplit("/", 1)[-1].removesuffix(".parquet")


def open_run(
    uri: str, options: StorageOptions | None = None, *, allow_incomplete: bool = False
) -> LabelRun:
    """Open the run named by ``uri`` (``<output_uri>/runs/<run_id>``).

    Raises :class:`RunNotFoundError` when the run has no record, plan or marker, and
    :class:`RunIncompleteError` when it is not committed and ``allow_incomplete`` is False.
    """
    layout = parse_run_uri(uri)
    options = options or StorageOptions()
    try:
        committed = ledger.read_success(layout.output_uri, layout.run_id, options) is not None
        plan = ledger.load_plan(layout.output_uri, layout.run_id, options)
    except (ledger.LedgerError, TableError) as exc:
        raise InputError(uri, str(exc)) from None
    try:
        record = table_io.read_json(layout.record_uri, options)
    except FileNotFoundError:
        record = None
    except TableError as exc:
        raise InputError(exc.source, exc.problem) from None
    if not committed and plan is None and record is None:
        raise RunNotFoundError(
            uri,
            f"no run {layout.run_id!r} here (no {layout.record_uri}, plan or _SUCCESS marker)",
        )
    if not committed and not allow_incomplete:
        raise RunIncompleteError(
            uri,
            f"run {layout.run_id!r} is not committed (no {layout.success_uri}): it is still "
            "running or it failed; use --allow-incomplete to read its finished shards",
        )
    if record is not None and not isinstance(record, dict):
        raise InputError(layout.record_uri, "run record is not a JSON object")
    if not committed:
        logger.warning("run %s is not committed: reading its finished shards only", layout.run_id)
    return LabelRun(layout, record, plan, committed, options)
