"""Per-video STM memory: pinned seed entries, capped permanent entries, one temporary entry.

An entry is one frame encoded by the memory encoder for the objects known on that frame. Entries are
kept as tokens (N objects x (h*w) x C) so a read is one concatenation along the token axis.

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

    def rows(self, object_ids: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``object_ids`` (all of which this entry must hold), in that order."""
        if object_ids == self.object_ids:
            return self.keys, self.values
        index = torch.tensor(
            [self.object_ids.index(o) for o in object_ids], device=self.keys.device
        )
        return self.keys.index_select(0, index), self.values.index_select(0, index)


class MemoryBank:
    def __init__(self, max_permanent: int | None = None) -> None:
        if max_permanent is not None and max_permanent < 1:
            raise ValueError(f"max_memory_frames must be >= 1 or None, got {max_permanent}")
        self.max_permanent = max_permanent
        self._permanent: list[MemoryEntry] = []  # ascending frame index
        self._temporary: MemoryEntry | None = None

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
        if not permanent:
            self._temporary = entry
            return []
        self._permanent.append(entry)
        evicted = self.evict()
        if entry.frame_index in evicted:  # the previous frame is always read, even if not kept
            self._temporary = entry
        return evicted

    def evict(self) -> list[int]:
        """Drop the oldest unpinned permanent entries until the cap holds (or only seeds remain)."""
        evicted: list[int] = []
        if self.max_permanent is None:
            return evicted
        while len(self._permanent) > self.max_permanent:
            oldest = next((e for e in self._permanent if not e.pinned), None)
            if oldest is None:
                break
            self._permanent.remove(oldest)
            evicted.append(oldest.frame_index)
        return evicted

    def read(self, object_ids: tuple[int, ...], since: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory of ``object_ids`` (objects that joined on frame ``since``): every entry from
        that frame on. -> keys N x M x Ck, values N x M x Cv, M = T*h*w."""
        entries = [e for e in self._permanent if e.frame_index >= since]
        if self._temporary is not None and self._temporary.frame_index >= since:
            entries.append(self._temporary)
        if not entries:
            raise RuntimeError(f"no memory for objects {object_ids} since frame {since}")
        rows = [e.rows(object_ids) for e in entries]
        if len(rows) == 1:
            return rows[0]
        return torch.cat([k for k, _ in rows], dim=1), torch.cat([v for _, v in rows], dim=1)

    def nbytes(self) -> int:
        """Bytes held by the memory tensors (for benchmarks and logs)."""
        entries = self._permanent + ([self._temporary] if self._temporary else [])
        return sum(
            e.keys.numel() * e.keys.element_size() + e.values.numel() * e.values.element_size()
            for e in entries
        )
