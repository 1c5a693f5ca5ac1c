"""Propagate seed masks through one video: the contract every other layer calls.

``propagate()`` streams: it holds one frame (plus the previous one, whose memory encoding is
deferred until the next frame arrives) and the memory bank, never the whole video. Per-frame
decisions are named first and then acted on (see :meth:`VideoSession.step`).

With one seed on frame 0 and unbounded memory this is the official release's evaluation loop:
frame t is segmented against the permanent entries (frames 0, mem_every, 2*mem_every, ...) plus
frame t-1 as a temporary entry, each encoded with its soft probabilities.

Generalisations beyond the release:
- An object joins on the frame of its first seed; before it, it has no channel; on it, its mask is
  exactly the seed; afterwards its memory is the entries from that frame on.
- A seed for a known object is a correction: it replaces the prediction on that frame, pixels it
  claims are taken from every other object, and the frame goes into memory.
- Every seed frame is a pinned permanent entry; other permanent entries are every ``mem_every``-th
  frame counted from the first seed, capped by ``max_memory_frames`` (see memory_bank.py).

Precision (``precision``): ``"fp32"`` is the release's arithmetic. ``"bf16"`` and ``"fp16"`` run
the network under autocast (fp16 only on CUDA); the memory bank then holds the compute dtype,
halving its size, while probabilities, seeds and the soft aggregation stay float32 and every
:class:`FrameResult` is float32. On a CPU without native bf16 (AVX2 only) bf16 is emulated and
slower than fp32 (docs/benchmarks.md): a warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import native_bf16
from .errors import InputError
from .memory_bank import MemoryBank, MemoryEntry
from .model.inference import inference_copy
from .model.network import STM
from .model.ops import Pad, others_mask, pad_to_multiple, soft_aggregate, unpad

logger = logging.getLogger(__name__)

PAD_MULTIPLE = 16
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None for fp32), or ValueError where
    the device cannot run it."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device, not {device.type}")
        return torch.float16
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision bf16: this CUDA device has no bfloat16")
        if device.type == "cpu" and not native_bf16(device):
            logger.warning("precision bf16 on a CPU without native bfloat16: emulated, slower")
        return torch.bfloat16
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


@dataclass(frozen=True)
class FrameResult:
    """One frame's output. ``probs``: float32 (1 + N) x H x W (background, then ``object_ids``);
    ``labels``: uint8 H x W in the caller's object ids."""

    frame_index: int
    object_ids: tuple[int, ...]
    probs: np.ndarray
    labels: np.ndarray

    def labels_at(self, size: tuple[int, int]) -> np.ndarray:
        """The label map at another ``(height, width)``: the probabilities resized bilinearly,
        then the most likely id per pixel. Why not resize ``labels``: nearest-neighbour
        upscaling of a label map turns each boundary into a staircase of working-size pixels,
        which costs boundary accuracy (F) when propagation ran on downscaled frames."""
        if tuple(size) == self.labels.shape:
            return self.labels
        probs = torch.from_numpy(self.probs).unsqueeze(0)
        probs = F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)
        lookup = np.array((0, *self.object_ids), dtype=np.uint8)
        return lookup[probs[0].argmax(dim=0).numpy()]


@dataclass
class _Pending:
    """The latest frame, kept until the next one arrives so it is encoded into memory only if
    something will read it."""

    frame_index: int
    image: torch.Tensor  # 1 x 3 x Hp x Wp, padded
    probs: torch.Tensor  # (1 + N) x Hp x Wp, padded
    object_ids: tuple[int, ...]
    permanent: bool
    pinned: bool


@dataclass(frozen=True)
class StepPlan:
    """One frame's input and decisions, made by :meth:`VideoSession.begin` before any network
    work; :meth:`VideoSession.finish` acts on them once the frame is segmented."""

    t: int
    image: torch.Tensor  # 1 x 3 x Hp x Wp, padded
    seed: np.ndarray | None
    seed_ids: tuple[int, ...]
    seed_complete: bool
    need_segment: bool
    is_seed_frame: bool
    is_permanent: bool


MemoryGroup = tuple[list[int], torch.Tensor, torch.Tensor]  # object rows, keys, values


def compute_context(device: torch.device, dtype: torch.dtype | None) -> ExitStack:
    """Inference mode plus, for bf16/fp16, autocast to ``dtype``: where the network runs."""
    stack = ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(torch.autocast(device.type, dtype=dtype, enabled=dtype is not None))
    return stack


def aggregate(object_probs: torch.Tensor) -> torch.Tensor:
    """N x Hp x Wp per-object probabilities -> (1 + N) x Hp x Wp frame probabilities."""
    return F.softmax(soft_aggregate(object_probs), dim=0)


class VideoSession:
    """Per-video state for one STM network (one session per video; the network is shared).

    :meth:`step` runs one frame. Its stages are public so that
    :mod:`stm_core.batch_propagation` can run the network for several sessions at once:
    :meth:`begin` (checks and decisions), :meth:`memory_inputs` / :meth:`store_memory` (the
    previous frame into memory), :meth:`memory_groups` (what to read) and :meth:`finish`
    (seeds, the next pending frame, the result). Every stage but :meth:`begin` runs inside
    :meth:`compute`.
    """

    def __init__(
        self,
        model: STM,
        mem_every: int = 5,
        max_memory_frames: int | None = None,
        precision: Precision = "fp32",
    ):
        if mem_every < 1:
            raise ValueError(f"mem_every must be >= 1, got {mem_every}")
        self.model = model
        self.mem_every = mem_every
        self.bank = MemoryBank(max_memory_frames)
        self.device = next(model.parameters()).device
        self.dtype = compute_dtype(precision, self.device)
        self.object_ids: tuple[int, ...] = ()
        self.joined_on: dict[int, int] = {}  # object id -> frame of its first seed
        self.first_seed_frame: int | None = None
        self.size: tuple[int, int] | None = None
        self._pad: Pad | None = None
        self._pending: _Pending | None = None

    def step(
        self,
        t: int,
        frame: np.ndarray,
        seed: np.ndarray | None = None,
        seed_complete: bool = False,
    ) -> FrameResult:
        """Segment frame ``t`` (H x W x 3 uint8), applying ``seed`` (H x W uint8) if given.

        ``seed_complete``: the seed is the frame's complete annotation (a human correction of
        the whole frame): every known object missing from it is absent, and every pixel it
        leaves at 0 is background. Otherwise objects not in the seed keep their prediction
        outside the seed's pixels (a seed only says where its own objects are).
        """
        plan = self.begin(t, frame, seed, seed_complete)
        with self.compute():
            self._memorize_pending()
            probs = self._segment(plan.image) if plan.need_segment else None
            return self.finish(plan, probs)

    def compute(self) -> ExitStack:
        return compute_context(self.device, self.dtype)

    def begin(
        self,
        t: int,
        frame: np.ndarray,
        seed: np.ndarray | None = None,
        seed_complete: bool = False,
    ) -> StepPlan:
        """Check frame ``t`` and its seed (InputError, before any state changes but the
        video's size on its first frame) and decide what this frame does."""
        self._check_frame(t, frame)
        if seed is not None:
            seed = self._check_seed(t, seed)
        with self.compute():
            image = self._to_tensor(frame)
        # Decide first, then act.
        seed_ids = _ids_in(seed) if seed is not None else ()
        if seed_ids and self.first_seed_frame is None:
            self.first_seed_frame = t
        is_seed_frame = bool(seed_ids) or (seed is not None and seed_complete)
        is_permanent = is_seed_frame or (
            self.first_seed_frame is not None and (t - self.first_seed_frame) % self.mem_every == 0
        )
        return StepPlan(
            t,
            image,
            seed,
            seed_ids,
            seed_complete,
            need_segment=bool(self.object_ids),
            is_seed_frame=is_seed_frame,
            is_permanent=is_permanent,
        )

    def finish(self, plan: StepPlan, probs: torch.Tensor | None) -> FrameResult:
        """The frame's result from its segmentation ``probs`` ((1 + N) x Hp x Wp, from
        :func:`aggregate`; None when ``plan.need_segment`` is false), its seed applied; the
        frame becomes the pending memory entry."""
        if probs is None:
            probs = self._background(plan.image)
        if plan.is_seed_frame:
            assert plan.seed is not None
            probs = self._apply_seed(plan.t, probs, plan.seed, plan.seed_ids, plan.seed_complete)
        # The padding border holds no object: memory is encoded from zero-padded masks, as
        # the release does (it crops its probabilities and pads them again with zeros).
        probs = F.pad(unpad(probs, self._pad), self._pad)
        if self.object_ids:
            self._pending = _Pending(
                plan.t,
                plan.image,
                probs,
                self.object_ids,
                plan.is_permanent,
                pinned=plan.is_seed_frame,
            )
        return self._result(plan.t, probs)

    # -- memory ---------------------------------------------------------------------------
    def _memorize_pending(self) -> None:
        inputs = self.memory_inputs()
        if inputs is not None:
            self.store_memory(*self.model.encode_memory(*inputs))

    def memory_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The memory encoder's input for the pending frame (None when there is none): the
        frame 1 x 3 x Hp x Wp, each object's mask and the union of the others', N x Hp x Wp."""
        if self._pending is None:
            return None
        masks = self._pending.probs[1:]
        return self._pending.image, masks, others_mask(masks)

    def store_memory(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add the pending frame's encoding (keys N x (h*w) x Ck, values N x (h*w) x Cv)."""
        p = self._pending
        assert p is not None
        entry = MemoryEntry(p.frame_index, p.object_ids, keys, values, pinned=p.pinned)
        self.bank.add(entry, permanent=p.permanent)
        self._pending = None

    # -- segmentation ---------------------------------------------------------------------
    def _segment(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities (1 + N) x Hp x Wp of the known objects on this frame."""
        query = self.model.encode_query(image)
        object_probs = torch.empty((len(self.object_ids), *image.shape[-2:]), device=self.device)
        for rows, keys, values in self.memory_groups():
            object_probs[rows] = self.model.segment(query, keys, values).float()
        return aggregate(object_probs)

    def memory_groups(self) -> Iterator[MemoryGroup]:
        """Objects that joined on the same frame share the same memory frames: one read each.

        Yields the group's rows in ``object_ids`` and its memory (keys N x M x Ck, values
        N x M x Cv: views into the bank, valid until the next :meth:`store_memory`)."""
        by_frame: dict[int, list[int]] = {}
        for o in self.object_ids:
            by_frame.setdefault(self.joined_on[o], []).append(o)
        for since, ids in sorted(by_frame.items()):
            group = tuple(ids)
            keys, values = self.bank.read(group, since)
            yield [self.object_ids.index(o) for o in group], keys, values

    def _background(self, image: torch.Tensor) -> torch.Tensor:
        return torch.ones((1, *image.shape[-2:]), device=self.device)

    def _apply_seed(
        self,
        t: int,
        probs: torch.Tensor,
        seed: np.ndarray,
        seed_ids: tuple[int, ...],
        complete: bool = False,
    ) -> torch.Tensor:
        """Seed objects get exactly their mask; everyone else keeps their prediction outside it,
        or, for a ``complete`` seed, is absent (the seed's 0 pixels are background)."""
        new_ids = tuple(o for o in seed_ids if o not in self.joined_on)
        for o in new_ids:
            self.joined_on[o] = t
        merged_ids = tuple(sorted(self.object_ids + new_ids))
        labels, _ = pad_to_multiple(torch.from_numpy(seed).to(self.device), PAD_MULTIPLE)
        out = torch.zeros((1 + len(merged_ids), *probs.shape[-2:]), device=self.device)
        out[0] = probs[0]
        for i, o in enumerate(self.object_ids):
            out[1 + merged_ids.index(o)] = probs[1 + i]
        claimed = (labels > 0).to(out.dtype)
        out *= 1 - claimed
        if complete:
            out.zero_()
            out[0] = 1 - claimed
        for o in seed_ids:
            out[1 + merged_ids.index(o)] = (labels == o).to(out.dtype)
        self.object_ids = merged_ids
        return out

    # -- input checks and conversions -----------------------------------------------------
    def _check_frame(self, t: int, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(
                f"frame {t}",
                f"expected an H x W x 3 uint8 RGB array, got {frame.dtype} {frame.shape}",
            )
        size = (frame.shape[0], frame.shape[1])
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise InputError(
                f"frame {t}",
                f"size {size[1]}x{size[0]} differs from the video's "
                f"{self.size[1]}x{self.size[0]} (W x H)",
            )

    def _check_seed(self, t: int, seed: np.ndarray) -> np.ndarray:
        seed = np.asarray(seed)
        if seed.ndim != 2 or seed.shape != self.size:
            raise InputError(
                f"seed for frame {t}",
                f"mask shape {seed.shape} does not match the frame size {self.size} (H x W)",
            )
        if seed.dtype != np.uint8:
            if seed.min() < 0 or seed.max() > 255 or not np.issubdtype(seed.dtype, np.integer):
                raise InputError(f"seed for frame {t}", "labels must be integers in 0..255")
            seed = seed.astype(np.uint8)
        return np.ascontiguousarray(seed)

    def _to_tensor(self, frame: np.ndarray) -> torch.Tensor:
        frame = np.ascontiguousarray(frame)
        if not frame.flags.writeable:  # torch.from_numpy warns on read-only arrays
            frame = frame.copy()
        image = torch.from_numpy(frame).to(self.device)
        image = image.permute(2, 0, 1).unsqueeze(0).float() / 255.0
        padded, self._pad = pad_to_multiple(image, PAD_MULTIPLE)
        return padded

    def _result(self, t: int, probs: torch.Tensor) -> FrameResult:
        assert self._pad is not None
        probs = unpad(probs, self._pad)
        lookup = torch.tensor((0, *self.object_ids), dtype=torch.uint8, device=probs.device)
        labels = lookup[probs.argmax(dim=0)]
        return FrameResult(
            frame_index=t,
            object_ids=self.object_ids,
            probs=probs.float().cpu().numpy(),
            labels=labels.cpu().numpy(),
        )


def propagate(
    model: STM,
    frames: Iterable[np.ndarray],
    seeds: Mapping[int, np.ndarray],
    mem_every: int = 5,
    max_memory_frames: int | None = None,
    complete_seeds: Collection[int] = (),
    precision: Precision = "fp32",
) -> Iterator[FrameResult]:
    """Yield one :class:`FrameResult` per frame of ``frames``, in order.

    ``frames``: any iterable of H x W x 3 uint8 RGB arrays (consumed lazily); ``seeds``: frame index
    -> H x W uint8 label map (0 = background, any other value an object id). ``complete_seeds``:
    frame indices whose seed is the frame's complete annotation (see :meth:`VideoSession.step`).
    ``precision``: fp32 (default, the release's arithmetic), bf16 or fp16 (see the module
    docstring). The model stays on its own device; the caller picks it (``stm_core.load_model``).
    """
    check_seed_frames(seeds)
    session = VideoSession(inference_copy(model), mem_every, max_memory_frames, precision)
    complete = set(complete_seeds)
    count = 0
    for t, frame in enumerate(frames):
        yield session.step(t, frame, seeds.get(t), t in complete)
        count = t + 1
    check_seeds_within(seeds, count)


def check_seed_frames(seeds: Mapping[int, np.ndarray]) -> None:
    """InputError unless there is a seed and every seed's frame index is a non-negative int."""
    if not seeds:
        raise InputError(None, "no seed masks: at least one frame needs a seed")
    bad = [k for k in seeds if not isinstance(k, int | np.integer) or k < 0]
    if bad:
        raise InputError(None, f"seed frame indices must be non-negative integers, got {bad}")


def check_seeds_within(seeds: Mapping[int, np.ndarray], count: int) -> None:
    """InputError if a seed is for a frame past the end of a video of ``count`` frames."""
    beyond = sorted(k for k in seeds if k >= count)
    if beyond:
        raise InputError(None, f"seeds for frames {beyond} but the video has only {count} frames")


def _ids_in(seed: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unique(seed) if i != 0)
