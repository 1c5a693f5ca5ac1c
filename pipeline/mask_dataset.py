"""A labeling run's masks as training data: frames from the corpus next to their decoded masks.

The masks table is written for downstream training, so this module reads it back as a dataset,
in two forms over one item contract:

- :func:`ray_dataset`: a streaming ``ray.data.Dataset`` for Ray Train. The driver only opens the
  run, reads the video id column and lists the corpus; the Dataset starts from one small row per
  video and Ray workers ``flat_map`` each into its frames, reading that video's masks (one shard
  file) and frames as they go, so no frame or decoded mask passes through the driver.
- :class:`TorchMaskDataset`: a map-style ``torch.utils.data.Dataset`` for one machine. Building
  it reads the kept rows (the RLE still compressed: a few hundred bytes a mask) into an index of
  (video, frame); ``__getitem__`` decodes that frame's masks and reads its image. It pickles, so
  a ``DataLoader`` with ``num_workers > 0`` works (each worker opens its own files).

One item is one frame of one video, a dict:

============  ===============================  =================================================
key           type                             meaning
============  ===============================  =================================================
video_id      str                              the corpus's video id
frame_index   int                              0-based position in the video
frame_name    str                              as the masks table stores it
image         H x W x 3 uint8                  the corpus frame, RGB, at the masks' size
labels        H x W uint8                      0 = background, k = object k (the run reader's
                                               label map)
object_ids    (K,) int32                       objects with a row on this frame, ascending (an
                                               absent object has one: an empty mask, score 0)
scores        (K,) float32                     each object's ``score`` (1 for seed rows)
is_seed       (K,) bool                        each object's ``is_seed``
masks         K x H x W bool                   only with ``object_masks=True``:
                                               ``labels == object_ids[k]``
============  ===============================  =================================================

Sizes: masks are stored at the video's native size (the job propagates at a working size and
scales back; see :mod:`pipeline.corpus.frames`), so frames are read at their native size too,
never resized. A corpus frame of another size, or a frame folder whose k-th file is no longer
the frame the masks name, is an :class:`~stm_core.errors.InputError` naming the file: the corpus
changed since the run and the masks would not line up with it.

Filters (:class:`FrameFilter`, the same for both forms; frame level, because a training label
map says "background" wherever no object is, so a frame is only usable whole):

- ``video_ids``: only these videos; an id the run has no masks for raises the run reader's
  :class:`~pipeline.run_reader.UnknownVideoError` before anything is read;
- ``min_score``: keep a frame only if every non-empty mask on it scores at least this (empty
  masks, i.e. absent objects, score 0 and do not count; seed rows score 1). The data engine's
  selection (:mod:`pipeline.engine.selection`) uses the same rule, plus a consistency test;
- ``seeds``: ``"include"`` (all frames), ``"only"`` (frames with a seed row: the user's own
  masks) or ``"exclude"`` (frames without one: pseudo-labels only).

Frames come from the corpus named in the run record (``corpus_uri``, seeds, found with
:func:`pipeline.corpus.discover`, with :meth:`LabelRun.corpus_options`), as ``stm-label export``
and ``preview`` read it. A frame folder's frame is one object read; a video file is decoded from
its start, and a reader keeps its decoder open to go on from the last frame it returned, so
frames asked for in order cost one pass (in random order, each frame decodes the video up to it:
shuffle videos and not frames, or use :func:`ray_dataset`, for corpora of video files).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.utils.data

from schemas.common import StorageOptions
from stm_core.codec import decode_frame, image_size, size_text
from stm_core.errors import InputError

from .corpus import VideoTask, frame_name, iter_frames
from .run_reader import LabelRun, RunCorpus, UnknownVideoError, VideoMasks, open_run
from .storage import fs_path, open_fs

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "ITEM_KEYS",
    "FrameFilter",
    "SEED_MODES",
    "SeedMode",
    "TorchMaskDataset",
    "collate_frames",
    "ray_dataset",
]

logger = logging.getLogger(__name__)

SeedMode = Literal["include", "only", "exclude"]
SEED_MODES: tuple[str, ...] = ("include", "only", "exclude")
ITEM_KEYS: tuple[str, ...] = (
    "video_id",
    "frame_index",
    "frame_name",
    "image",
    "labels",
    "object_ids",
    "scores",
    "is_seed",
)
OBJECT_MASKS_KEY = "masks"  # added to ITEM_KEYS with object_masks=True


# --- which frames ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameFilter:
    """Which frames to read (module docstring): ``video_ids`` (None = every video with masks),
    ``min_score`` (None = no score test) and ``seeds`` (``include``, ``only``, ``exclude``).
    Checked when built, so a typo fails before anything is read."""

    video_ids: Sequence[str] | None = None  # stored as a tuple, without repeats
    min_score: float | None = None
    seeds: SeedMode = "include"

    def __post_init__(self) -> None:
        if isinstance(self.video_ids, str):  # "cat" would otherwise be read as c, a, t
            raise TypeError(f"video_ids must be a list of ids, not the string {self.video_ids!r}")
        if self.video_ids is not None:
            object.__setattr__(self, "video_ids", tuple(dict.fromkeys(self.video_ids)))
        if self.seeds not in SEED_MODES:
            raise ValueError(f"seeds must be one of {list(SEED_MODES)}, not {self.seeds!r}")
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1] (scores are), not {self.min_score}")

    def apply(self, video: VideoMasks) -> VideoMasks | None:
        """``video`` with only the rows of its kept frames; None when no frame is kept."""
        rows = video.rows
        frames = rows["frame_index"].to_numpy()
        indices, frame_of_row = np.unique(frames, return_inverse=True)
        keep = np.ones(indices.size, dtype=bool)
        if self.min_score is not None:
            doubtful = (rows["area"].to_numpy() > 0) & (rows["score"].to_numpy() < self.min_score)
            keep &= np.bincount(frame_of_row, weights=doubtful, minlength=indices.size) == 0
        if self.seeds != "include":
            seeded = rows["is_seed"].to_numpy(zero_copy_only=False)
            has_seed = np.bincount(frame_of_row, weights=seeded, minlength=indices.size) > 0
            keep &= has_seed if self.seeds == "only" else ~has_seed
        if not keep.any():
            return None
        if keep.all():
            return video
        kept = rows.filter(pc.is_in(rows["frame_index"], pa.array(indices[keep], pa.int32())))
        return VideoMasks(video.video_id, kept, video.source)


def _selected_videos(run: LabelRun, wanted: Sequence[str] | None) -> list[str]:
    """The videos to read: ``wanted`` (each checked against the run) or every video with masks.

    An id without masks raises the run reader's own error: asking the reader for that video
    fails in its lookup (unknown id, unfinished shard) or on its one shard (labeling failed).
    """
    known = run.video_ids()
    if wanted is None:
        return known
    for video_id in sorted(set(wanted) - set(known)):
        run.video(video_id)  # raises UnknownVideoError naming the plan or the shard
        raise UnknownVideoError(  # not reached unless a shard was written meanwhile
            run.layout.masks_dir, f"run {run.run_id!r} has no masks for video {video_id!r}"
        )
    return list(wanted)


# --- frames ---------------------------------------------------------------------------------


class _FrameReader:
    """The frames of one corpus video by index, at the masks' ``size`` (height, width).

    Frame folders: one object read per frame. Video files: one open decoder that goes forward
    from the last frame it returned and starts again only for an earlier frame.
    """

    def __init__(self, task: VideoTask, options: StorageOptions, size: tuple[int, int]) -> None:
        self.task = task
        self.size = size
        self.fs, _ = open_fs(task.uri, options)
        self._stream: Iterator[np.ndarray] | None = None
        self._position = -1  # index of the frame the stream returned last

    def read(self, index: int, name: str) -> np.ndarray:
        """Frame ``index``, whose stored name is ``name`` (``H x W x 3`` uint8 RGB)."""
        where = f"{self.task.uri} (video {self.task.video_id!r}, frame {index})"
        count = self.task.num_frames
        if count is not None and index >= count:
            raise InputError(where, f"the corpus has {count} frames of this video, not {index + 1}")
        if frame_name(self.task, index) != name:
            raise InputError(
                where,
                f"the corpus names this frame {frame_name(self.task, index)!r} but the masks "
                f"name it {name!r}: the video changed since the run",
            )
        if self.task.kind == "frames":
            return self._read_file(index)
        return self._read_stream(index, where)

    def _read_file(self, index: int) -> np.ndarray:
        uri = f"{self.task.uri}/{self.task.frame_files[index]}"
        where = f"{uri} (video {self.task.video_id!r}, frame {index})"
        try:
            data = self.fs.cat_file(fs_path(uri))
        except OSError as exc:
            raise InputError(where, f"cannot read ({type(exc).__name__}: {exc})") from None
        size = image_size(data, where)
        if size != self.size:
            raise InputError(
                where,
                f"frame size {size_text(size)} (width x height) differs from the masks' "
                f"{size_text(self.size)}: the video changed since the run",
            )
        return decode_frame(data, where)

    def _read_stream(self, index: int, where: str) -> np.ndarray:
        if self._stream is None or index <= self._position:
            self.close()
            self._stream = iter_frames(self.task, self.fs, expected_size=self.size)
            self._position = -1
        frame = None
        while self._position < index:
            try:
                frame = next(self._stream, None)
            except InputError:  # a corrupt frame ends the stream: the next call starts over
                self.close()
                raise
            if frame is None:
                count = self._position + 1
                self.close()
                raise InputError(where, f"the video has only {count} frames in the corpus")
            self._position += 1
        assert frame is not None  # the loop ran at least once: position < index on entry
        return frame

    def close(self) -> None:
        """Stop the open decoder, if any (its file is closed with it)."""
        if self._stream is not None:
            self._stream.close()  # type: ignore[attr-defined]  # a generator
        self._stream = None
        self._position = -1


# --- items ----------------------------------------------------------------------------------


@dataclass
class _KeptVideo:
    """One video's kept rows (sorted by frame, then object) and where each frame's rows are."""

    masks: VideoMasks
    task: VideoTask
    frame_indices: np.ndarray = field(init=False)  # kept frames, ascending
    starts: np.ndarray = field(init=False)  # first row of each kept frame
    ends: np.ndarray = field(init=False)  # one past its last row

    def __post_init__(self) -> None:
        column = self.masks.rows["frame_index"].to_numpy()
        self.frame_indices = np.asarray(self.masks.frame_indices, dtype=np.int64)
        self.starts = np.searchsorted(column, self.frame_indices, side="left")
        self.ends = np.searchsorted(column, self.frame_indices, side="right")

    @property
    def size(self) -> tuple[int, int]:
        return self.masks.height, self.masks.width

    def item(self, position: int, reader: _FrameReader, object_masks: bool) -> dict[str, Any]:
        """The item (module docstring) of the ``position``-th kept frame."""
        frame_index = int(self.frame_indices[position])
        start, end = int(self.starts[position]), int(self.ends[position])
        rows = self.masks.rows.slice(start, end - start)
        decoded = self.masks.label_map(frame_index)
        object_ids = np.asarray(decoded.object_ids, dtype=np.int32)
        item = {
            "video_id": self.masks.video_id,
            "frame_index": frame_index,
            "frame_name": decoded.frame_name,
            "image": reader.read(frame_index, decoded.frame_name),
            "labels": decoded.labels,
            "object_ids": object_ids,
            "scores": rows["score"].to_numpy().astype(np.float32),
            "is_seed": rows["is_seed"].to_numpy(zero_copy_only=False).astype(bool),
        }
        if object_masks:
            item[OBJECT_MASKS_KEY] = decoded.labels[None] == object_ids[:, None, None]
        return item


@dataclass(frozen=True)
class _Prepared:
    """What both datasets start from: the opened run, the videos to read and their tasks."""

    run: LabelRun
    video_ids: list[str]
    tasks: dict[str, VideoTask]


def _prepare(
    run: LabelRun | str, options: StorageOptions | None, keep: FrameFilter, allow_incomplete: bool
) -> _Prepared:
    """Open the run (unless given opened), check the wanted videos, list the corpus once."""
    if not isinstance(run, LabelRun):
        run = open_run(run, options, allow_incomplete=allow_incomplete)
    selected = _selected_videos(run, keep.video_ids)
    corpus = RunCorpus.of_run(run)  # one listing; a changed video is warned about once
    return _Prepared(run, selected, {video_id: corpus.task(video_id) for video_id in selected})


# --- ray.data -------------------------------------------------------------------------------


def _video_items(
    unit: dict[str, Any],
    run: LabelRun,
    keep: FrameFilter,
    corpus_options: StorageOptions,
    object_masks: bool,
) -> Iterator[dict[str, Any]]:
    """One video's items, in frame order, for ``flat_map``: ``unit`` is a row of the videos
    Dataset (``video_id`` and its pickled ``task``). Runs on a Ray worker: reads the video's one
    shard file and its frames there."""
    task: VideoTask = pickle.loads(unit["task"])  # written by ray_dataset, not user input
    video = keep.apply(run.video(str(unit["video_id"])))
    if video is None:
        return
    kept = _KeptVideo(video, task)
    reader = _FrameReader(task, corpus_options, kept.size)
    try:
        for position in range(kept.frame_indices.size):
            yield kept.item(position, reader, object_masks)
    finally:
        reader.close()


def ray_dataset(
    run: LabelRun | str,
    options: StorageOptions | None = None,
    *,
    keep: FrameFilter | None = None,
    object_masks: bool = False,
    allow_incomplete: bool = False,
    num_cpus: float = 1.0,
) -> ray.data.Dataset:
    """The frames and masks of a run (``<output_uri>/runs/<run_id>`` or an opened
    :class:`LabelRun`) as a lazy ``ray.data.Dataset`` of items (module docstring), of the
    frames ``keep`` selects (default: all).

    ``options`` reach the run's output store (and, key by key, override the corpus settings the
    run recorded: :meth:`LabelRun.corpus_options`); both travel to the workers with the
    function that reads a video. ``allow_incomplete`` reads an uncommitted run's finished
    shards (:func:`~pipeline.run_reader.open_run`). Nothing is read until the Dataset is
    consumed; a Ray task per video (``num_cpus`` each) reads that video's frames in order, so
    items of one video come in frame order, while the order across videos is Ray's. String
    columns and frames of different sizes cannot become torch tensors: select the array columns
    (and resize in a ``map`` if sizes differ) before ``iter_torch_batches``.
    """
    import ray.data

    keep = keep or FrameFilter()
    prepared = _prepare(run, options, keep, allow_incomplete)
    units = [{"video_id": v, "task": pickle.dumps(prepared.tasks[v])} for v in prepared.video_ids]
    # a VideoTask is a few KB (its frame file names): one row, and one read task, per video
    videos = ray.data.from_items(
        units or [{"video_id": "", "task": b""}], override_num_blocks=max(1, len(units))
    )
    if not units:  # a run without masks: no rows
        videos = videos.limit(0)
    return videos.flat_map(
        _video_items,
        fn_kwargs={
            "run": prepared.run,
            "keep": keep,
            "corpus_options": prepared.run.corpus_options(),
            "object_masks": object_masks,
        },
        num_cpus=num_cpus,
    )


# --- torch ----------------------------------------------------------------------------------


class TorchMaskDataset(torch.utils.data.Dataset):
    """The frames and masks of a run as a map-style dataset of items (module docstring), in
    video id order, then frame order.

    Building it reads the selected videos' rows shard by shard and keeps the kept frames' rows
    (RLE compressed) in memory; masks are decoded and frames read by ``__getitem__``. Items hold
    numpy arrays; use :func:`collate_frames` as a ``DataLoader``'s ``collate_fn`` (the default
    one cannot stack ``object_ids`` of different lengths). Arguments as in :func:`ray_dataset`.
    With ``num_workers > 0`` each worker opens its own files and decoders.
    """

    def __init__(
        self,
        run: LabelRun | str,
        options: StorageOptions | None = None,
        *,
        keep: FrameFilter | None = None,
        object_masks: bool = False,
        allow_incomplete: bool = False,
    ) -> None:
        keep = keep or FrameFilter()
        prepared = _prepare(run, options, keep, allow_incomplete)
        self.run = prepared.run
        self.object_masks = object_masks
        self.corpus_options = self.run.corpus_options()
        self.videos: list[_KeptVideo] = []
        for video in self.run.iter_videos(prepared.video_ids):
            kept = keep.apply(video)
            if kept is not None:
                self.videos.append(_KeptVideo(kept, prepared.tasks[video.video_id]))
        self.videos.sort(key=lambda v: v.masks.video_id)
        counts = [v.frame_indices.size for v in self.videos]
        self._offsets = np.cumsum([0, *counts])  # item i is in video searchsorted(offsets, i)
        self._readers: dict[int, _FrameReader] = {}
        self._inherited: list[dict[int, _FrameReader]] = []
        self._pid = os.getpid()
        logger.info(
            "run %s: %d frames of %d videos kept", self.run.run_id, len(self), len(self.videos)
        )

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} of a dataset of {len(self)}")
        index %= len(self)
        which = int(np.searchsorted(self._offsets, index, side="right")) - 1
        video = self.videos[which]
        if self._pid != os.getpid():
            # A forked DataLoader worker: the parent's open files and decoders are not its to
            # use, nor to free: freeing a PyAV decoder joins its threads, which fork did not
            # copy, and hangs. They are kept, unused, until the worker exits.
            self._inherited.append(self._readers)
            self._readers, self._pid = {}, os.getpid()
        reader = self._readers.get(which)
        if reader is None:
            if self._readers:  # one open decoder per process: frames are read video by video
                for old in self._readers.values():
                    old.close()
                self._readers.clear()
            reader = self._readers[which] = _FrameReader(
                video.task, self.corpus_options, video.size
            )
        return video.item(index - int(self._offsets[which]), reader, self.object_masks)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_inherited"] = {}, []  # open files stay where they were opened
        return state


def collate_frames(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A ``DataLoader`` ``collate_fn`` for items: ``image`` (B x H x W x 3 uint8) and ``labels``
    (B x H x W uint8) stacked into tensors, ``frame_index`` a tensor, the per-object arrays
    (``object_ids``, ``scores``, ``is_seed``, ``masks``) lists of tensors (their lengths differ),
    ids and names lists. Frames of different sizes cannot be stacked: ValueError naming them."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    sizes = {tuple(item["labels"].shape) for item in items}
    if len(sizes) > 1:
        raise ValueError(
            f"frames of different sizes {sorted(sizes)} in one batch: resize them in the "
            "dataset, or batch frames of one size"
        )
    batch: dict[str, Any] = {
        "video_id": [item["video_id"] for item in items],
        "frame_name": [item["frame_name"] for item in items],
        "frame_index": torch.tensor([item["frame_index"] for item in items]),
        "image": torch.from_numpy(np.stack([item["image"] for item in items])),
        "labels": torch.from_numpy(np.stack([item["labels"] for item in items])),
    }
    for key in ("object_ids", "scores", "is_seed", OBJECT_MASKS_KEY):
        if key in items[0]:
            batch[key] = [torch.from_numpy(np.ascontiguousarray(item[key])) for item in items]
    return batch
