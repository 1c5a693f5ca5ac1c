"""Propagate several videos through one STM network at once, in lockstep.

Each step takes the next frame of every active video: the previous frames of all of them are
encoded into memory in one memory-encoder call (one batch row per (video, object)), the new
frames in one query-encoder call (one row per video), each video reads its own memory bank,
and the decoder runs once over every (video, object) pair. A video that ends (or fails) leaves
the batch and the next one joins, so up to ``videos_per_batch`` videos are always in flight.
Everything per video (seeds, late objects, corrections, soft aggregation, the memory schedule
and bank) is :class:`~stm_core.propagation.VideoSession`'s own code: this module only decides
which tensors go through the network together.

Frames of different sizes: **grouped, not padded.** Videos are batched only with videos whose
padded frame size (the working size rounded up to a multiple of 16, the size every video is
already padded to alone) is the same; every other size runs as its own group in the same step.
Padding a smaller frame further to a common size would change what the convolutions see at
its border, and with it every probability, so the batched labels would no longer be those of
labeling each video alone. Grouped, each row of a batch is exactly the tensor the video would
have on its own; the only difference is the batch the kernels run on, which can change float
rounding (measured: docs/benchmarks.md; tests/unit/test_batch_propagation.py asserts equal
labels and probabilities within 1e-4 in fp32).

Every video of a batch uses the same network, so first-frame fine-tuning (a model per video)
cannot be combined with it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from .errors import InputError
from .model.inference import inference_copy
from .model.network import STM
from .propagation import (
    FrameResult,
    Precision,
    StepPlan,
    VideoSession,
    aggregate,
    check_seed_frames,
    check_seeds_within,
    compute_context,
)

T = TypeVar("T")


@dataclass(frozen=True)
class VideoInput:
    """One video for :func:`propagate_videos`: the arguments :func:`~stm_core.propagate`
    takes for it, and ``key``, the caller's name for it in the events."""

    key: Hashable
    frames: Iterable[np.ndarray]
    seeds: Mapping[int, np.ndarray]
    complete_seeds: Collection[int] = ()


@dataclass(frozen=True)
class VideoFrame:
    """Frame ``result.frame_index`` of video ``key`` is done."""

    key: Hashable
    result: FrameResult


@dataclass(frozen=True)
class VideoEnd:
    """Video ``key`` left the batch after ``frames`` frames: finished (``error`` None) or
    failed. ``error``: what its frame iterator raised, or the InputError of a bad frame or
    seed, exactly what :func:`~stm_core.propagate` would raise for it alone."""

    key: Hashable
    frames: int
    error: Exception | None = None


@dataclass
class _Active:
    video: VideoInput
    session: VideoSession
    frames: Iterator[np.ndarray]
    complete: set[int] = field(default_factory=set)
    t: int = 0  # the next frame's index


def propagate_videos(
    model: STM,
    videos: Iterable[VideoInput],
    videos_per_batch: int,
    mem_every: int = 5,
    max_memory_frames: int | None = None,
    precision: Precision = "fp32",
) -> Iterator[VideoFrame | VideoEnd]:
    """Propagate ``videos`` with up to ``videos_per_batch`` in flight; yield their frames'
    results and their ends as they happen.

    Per video, the events are its :class:`VideoFrame` s in frame order, then one
    :class:`VideoEnd`; events of different videos interleave. ``videos`` is consumed lazily:
    the next video is taken when one leaves the batch. A video's failure (its frame iterator
    raises, or a frame or seed is bad) ends that video only; an error of the network itself
    (out of memory, say) is raised, since it cannot be charged to one video.
    """
    if videos_per_batch < 1:
        raise ValueError(f"videos_per_batch must be >= 1, got {videos_per_batch}")
    model = inference_copy(model)
    source = iter(videos)
    active: list[_Active] = []
    exhausted = False
    while True:
        ready: list[tuple[_Active, StepPlan]] = []
        pulled: list[_Active] = []  # asked for their next frame this step
        while True:  # every active video has its next frame, or has left and been replaced
            while not exhausted and len(active) < videos_per_batch:
                video = next(source, None)
                if video is None:
                    exhausted = True
                    break
                try:
                    check_seed_frames(video.seeds)
                except InputError as exc:
                    yield VideoEnd(video.key, 0, exc)
                    continue
                session = VideoSession(model, mem_every, max_memory_frames, precision)
                complete = set(video.complete_seeds)
                active.append(_Active(video, session, iter(video.frames), complete))
            waiting = [a for a in active if not any(a is p for p in pulled)]
            if not waiting:
                break
            for a in waiting:
                pulled.append(a)
                outcome = _next_step(a)
                if isinstance(outcome, StepPlan):
                    ready.append((a, outcome))
                else:
                    active.remove(a)
                    _close(a.frames)
                    yield outcome
        if not ready:
            return
        results = step_sessions([a.session for a, _ in ready], [plan for _, plan in ready])
        for (a, _), result in zip(ready, results, strict=True):
            a.t += 1
            yield VideoFrame(a.video.key, result)


def _next_step(a: _Active) -> StepPlan | VideoEnd:
    """Video ``a``'s next frame, checked and planned, or its end."""
    try:
        frame = next(a.frames)
    except StopIteration:
        try:
            check_seeds_within(a.video.seeds, a.t)
        except InputError as exc:
            return VideoEnd(a.video.key, a.t, exc)
        return VideoEnd(a.video.key, a.t)
    except Exception as exc:  # the video's own input failed: it alone stops
        return VideoEnd(a.video.key, a.t, exc)
    try:
        return a.session.begin(a.t, frame, a.video.seeds.get(a.t), a.t in a.complete)
    except InputError as exc:
        return VideoEnd(a.video.key, a.t, exc)


def _close(frames: Iterator[np.ndarray]) -> None:
    close = getattr(frames, "close", None)
    if close is not None:  # a generator: stop its read-ahead now, not when collected
        close()


def step_sessions(sessions: Sequence[VideoSession], plans: Sequence[StepPlan]) -> list[FrameResult]:
    """One step of every session (its ``plan`` from :meth:`VideoSession.begin`) with the
    network batched across sessions of the same padded frame size; the same results as
    ``session.step`` one by one, up to float rounding. Sessions must share one model and
    precision."""
    if not sessions:
        return []
    first = sessions[0]
    if any(s.model is not first.model or s.dtype != first.dtype for s in sessions):
        raise ValueError("sessions stepped together must share one model and precision")
    model = first.model
    with compute_context(first.device, first.dtype):
        _memorize(model, sessions)
        probs = _segment(model, sessions, plans)
        return [s.finish(plan, p) for s, plan, p in zip(sessions, plans, probs, strict=True)]


def _memorize(model: STM, sessions: Sequence[VideoSession]) -> None:
    """Every session's pending frame into its memory: one memory-encoder call per frame size,
    one batch row per (video, object)."""
    todo = [(s, inputs) for s in sessions if (inputs := s.memory_inputs()) is not None]
    for group in _by_size(todo, lambda item: item[1][0]):
        inputs = [item[1] for item in group]
        counts = [masks.shape[0] for _, masks, _ in inputs]
        keys, values = model.encode_memory(
            _rows([image.expand(masks.shape[0], -1, -1, -1) for image, masks, _ in inputs]),
            _rows([masks for _, masks, _ in inputs]),
            _rows([others for _, _, others in inputs]),
        )
        for (session, _), k, v in zip(group, keys.split(counts), values.split(counts), strict=True):
            session.store_memory(k, v)


def _segment(
    model: STM, sessions: Sequence[VideoSession], plans: Sequence[StepPlan]
) -> list[torch.Tensor | None]:
    """Each session's frame probabilities ((1 + N) x Hp x Wp; None where nothing is to be
    segmented): one query-encoder call per frame size (one row per video), each video's
    objects read against its own bank, one decoder call per frame size over all objects."""
    out: list[torch.Tensor | None] = [None] * len(sessions)
    todo = [i for i, plan in enumerate(plans) if plan.need_segment]
    for group in _by_size(todo, lambda i: plans[i].image):
        query = model.encode_query(_rows([plans[i].image for i in group]))
        fused, f8, f4, spans = [], [], [], []
        for j, i in enumerate(group):
            q = query.row(j) if len(group) > 1 else query
            for rows, keys, values in sessions[i].memory_groups():
                n = keys.shape[0]
                fused.append(model.read(q, keys, values))
                f8.append(q.f8.expand(n, -1, -1, -1))
                f4.append(q.f4.expand(n, -1, -1, -1))
                spans.append((i, rows))
        probs = model.decode(_rows(fused), _rows(f8), _rows(f4)).float()
        per_session: dict[int, torch.Tensor] = {}
        start = 0
        for i, rows in spans:
            if i not in per_session:
                size = (len(sessions[i].object_ids), *plans[i].image.shape[-2:])
                per_session[i] = torch.empty(size, device=probs.device)
            per_session[i][rows] = probs[start : start + len(rows)]
            start += len(rows)
        for i, object_probs in per_session.items():
            out[i] = aggregate(object_probs)
    return out


def _by_size(items: Iterable[T], image_of: Callable[[T], torch.Tensor]) -> list[list[T]]:
    """``items`` grouped by the padded size (H, W) of ``image_of(item)``, in first-seen order."""
    groups: dict[tuple[int, ...], list[T]] = {}
    for item in items:
        groups.setdefault(tuple(image_of(item).shape[-2:]), []).append(item)
    return list(groups.values())


def _rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors stacked along the batch axis; a single one as it is (no copy)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
