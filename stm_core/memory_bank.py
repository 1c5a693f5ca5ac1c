"""Per-video STM memory: pinned seed entries, capped permanent entries, one temporary entry.

An entry is one frame encoded by the memory encoder for the objects known on that frame
(N objects x (h*w) tokens x C). Entries live in two preallocated buffers, keys and values, of
shape (object rows x token capacity x C): an object's row holds its tokens of every entry, entry
after entry along the token axis, so a read is a slice of the buffers, not a concatenation of
every entry on every frame. Why: the per-frame ``torch.cat`` of all entries made a new tensor the
size of the whole bank each frame, and on long unbounded videos the process's memory grew about
five times faster than the bank itself (allocator churn; ``benchmarks/bench_memory_growth.py``).
The token capacity grows by doubling, so the buffers hold at most twice the bank; under a cap
they stop growing. Objects that joined on the same frame get adjacent rows, so the group read
together (:class:`~stm_core.propagation.VideoSession` reads one group per joining frame) is a
view; any other selection of objects is gathered with one copy.

Eviction policy (``max_permanent``): the bank holds at most ``max_permanent`` permanent entries.
Seed frames (every frame that carried a user mask: an object's first appearance or a correction)
are pinned and never evicted. When a new permanent entry takes the count over the cap, the oldest
unpinned entry is evicted (first in, first out), so memory keeps the seeds plus the most recent
propagated frames. If the seeds alone fill the cap, no propagated frame stays permanent. The
temporary entry (the previous frame, always read) is not counted. ``None`` = the release's
unbounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MemoryEntry:
    """One encoded frame. ``keys``: N x (h*w) x Ck; ``values``: N x (h*w) x Cv; rows follow
    ``object_ids`` (ascending)."""

    frame_index: int
    object_ids: tuple[int, ...]
    keys: torch.Tensor
    values: torch.Tensor
    pinned: bool


@dataclass(frozen=True)
class _Slot:
    """Where an entry's tokens are: the bookkeeping of one entry without its tensors."""

    frame_index: int
    object_ids: tuple[int, ...]
    pinned: bool


class MemoryBank:
    """Keys and values of one video's memory frames, read as one slice per object group.

    Permanent entry ``i`` holds tokens ``[i * hw, (i + 1) * hw)`` of the buffers, the temporary
    entry the ``hw`` tokens after the last permanent one. A read returns views into the
    buffers: use them before the next :meth:`add` or :meth:`evict`, which may move tokens.
    """

    def __init__(self, max_permanent: int | None = None) -> None:
        if max_permanent is not None and max_permanent < 1:
            raise ValueError(f"max_memory_frames must be >= 1 or None, got {max_permanent}")
        self.max_permanent = max_permanent
        self._permanent: list[_Slot] = []  # ascending frame index
        self._temporary: _Slot | None = None
        self._keys: torch.Tensor | None = None  # rows x token capacity x Ck
        self._values: torch.Tensor | None = None  # rows x token capacity x Cv
        self._rows: dict[int, int] = {}  # object id -> buffer row
        self._tokens = 0  # h*w of one entry, fixed by the first

    @property
    def permanent_frames(self) -> list[int]:
        return [e.frame_index for e in self._permanent]

    @property
    def frames(self) -> list[int]:
        """Frame indices a read would use, in read order: permanent, then temporary."""
        temp = [] if self._temporary is None else [self._temporary.frame_index]
        return self.permanent_frames + temp

    def add(self, entry: MemoryEntry, permanent: bool) -> list[int]:
        """Store the newest frame's entry; it replaces the temporary entry either way.

        Returns the frame indices evicted to honour the cap.
        """
        self._temporary = None
        self._write(len(self._permanent), entry)
        slot = _Slot(entry.frame_index, entry.object_ids, entry.pinned)
        if not permanent:
            self._temporary = slot
            return []
        self._permanent.append(slot)
        evicted = self.evict()
        if entry.frame_index in evicted:
            # The previous frame is always read, even if not kept. It was the newest entry, so
            # its tokens sit right after the remaining permanent ones: the temporary slot.
            self._temporary = slot
        return evicted

    def evict(self) -> list[int]:
        """Drop the oldest unpinned permanent entries until the cap holds (or only seeds remain)."""
        evicted: list[int] = []
        if self.max_permanent is None:
            return evicted
        while len(self._permanent) > self.max_permanent:
            oldest = next((i for i, e in enumerate(self._permanent) if not e.pinned), None)
            if oldest is None:
                break
            self._remove_tokens(oldest)
            evicted.append(self._permanent.pop(oldest).frame_index)
        return evicted

    def read(self, object_ids: tuple[int, ...], since: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory of ``object_ids`` (objects that joined on frame ``since``): every entry from
        that frame on. -> keys N x M x Ck, values N x M x Cv, M = T*h*w."""
        first = next(
            (i for i, e in enumerate(self._permanent) if e.frame_index >= since),
            len(self._permanent),
        )
        read = self._permanent[first:]
        if self._temporary is not None and self._temporary.frame_index >= since:
            read = [*read, self._temporary]
        if not read:
            raise RuntimeError(f"no memory for objects {object_ids} since frame {since}")
        for slot in read:
            if not set(object_ids) <= set(slot.object_ids):
                raise RuntimeError(f"frame {slot.frame_index} holds no memory of {object_ids}")
        assert self._keys is not None and self._values is not None
        start, stop = first * self._tokens, (first + len(read)) * self._tokens
        rows = [self._rows[o] for o in object_ids]
        if rows == list(range(rows[0], rows[0] + len(rows))):  # one group: a view
            r = slice(rows[0], rows[0] + len(rows))
            return self._keys[r, start:stop], self._values[r, start:stop]
        index = torch.tensor(rows, device=self._keys.device)
        return (
            self._keys[:, start:stop].index_select(0, index),
            self._values[:, start:stop].index_select(0, index),
        )

    def nbytes(self) -> int:
        """Bytes of memory the entries hold (for benchmarks and logs): what a read can use."""
        if self._keys is None or self._values is None:
            return 0
        per_token_row = (
            self._keys.shape[-1] * self._keys.element_size()
            + self._values.shape[-1] * self._values.element_size()
        )
        slots = self._permanent + ([self._temporary] if self._temporary else [])
        return sum(len(s.object_ids) for s in slots) * self._tokens * per_token_row

    def capacity_nbytes(self) -> int:
        """Bytes the buffers hold, used or not (at most about twice :meth:`nbytes` unbounded)."""
        if self._keys is None or self._values is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self._keys, self._values))

    # -- buffers --------------------------------------------------------------------------
    def _write(self, position: int, entry: MemoryEntry) -> None:
        """Copy ``entry``'s tokens into entry slot ``position``, growing the buffers if needed."""
        n, tokens, _ = entry.keys.shape
        if self._keys is None:
            self._tokens = tokens
        elif tokens != self._tokens:
            raise ValueError(
                f"frame {entry.frame_index}: {tokens} memory tokens, the video's entries have "
                f"{self._tokens} (frame size changed?)"
            )
        for o in entry.object_ids:
            self._rows.setdefault(o, len(self._rows))
        self._reserve(len(self._rows), (position + 1) * tokens, entry)
        assert self._keys is not None and self._values is not None
        start, stop = position * tokens, (position + 1) * tokens
        rows = [self._rows[o] for o in entry.object_ids]
        if rows == list(range(rows[0], rows[0] + n)):
            self._keys[rows[0] : rows[0] + n, start:stop] = entry.keys
            self._values[rows[0] : rows[0] + n, start:stop] = entry.values
        else:
            index = torch.tensor(rows, device=self._keys.device)
            self._keys[index, start:stop] = entry.keys.to(self._keys.dtype)
            self._values[index, start:stop] = entry.values.to(self._values.dtype)

    def _reserve(self, rows: int, tokens: int, like: MemoryEntry) -> None:
        """Buffers of at least ``rows`` x ``tokens``; tokens grow by doubling, rows as needed."""
        if self._keys is None or self._values is None:
            self._keys = like.keys.new_zeros((rows, tokens, like.keys.shape[-1]))
            self._values = like.values.new_zeros((rows, tokens, like.values.shape[-1]))
            return
        have_rows, have_tokens = self._keys.shape[:2]
        if rows <= have_rows and tokens <= have_tokens:
            return
        new_tokens = max(tokens, 2 * have_tokens) if tokens > have_tokens else have_tokens
        new_rows = max(rows, have_rows)
        used = self._used_tokens()
        keys = self._keys.new_zeros((new_rows, new_tokens, self._keys.shape[-1]))
        values = self._values.new_zeros((new_rows, new_tokens, self._values.shape[-1]))
        keys[:have_rows, :used] = self._keys[:, :used]
        values[:have_rows, :used] = self._values[:, :used]
        self._keys, self._values = keys, values

    def _used_tokens(self) -> int:
        entries = len(self._permanent) + (self._temporary is not None)
        return entries * self._tokens

    def _remove_tokens(self, position: int) -> None:
        """Close the gap of permanent entry ``position``: later tokens move one entry left."""
        assert self._keys is not None and self._values is not None
        start, stop = position * self._tokens, self._used_tokens()
        tail = slice(start + self._tokens, stop)
        moved = slice(start, stop - self._tokens)
        self._keys[:, moved] = self._keys[:, tail].clone()
        self._values[:, moved] = self._values[:, tail].clone()
