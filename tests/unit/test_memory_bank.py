"""Which frames are in memory at every step, with the release's unbounded policy and with a cap."""

import numpy as np
import pytest
import torch

from stm_core import STM, VideoSession
from stm_core.memory_bank import MemoryBank, MemoryEntry


def _entry(t: int, pinned: bool = False, ids=(1,)) -> MemoryEntry:
    return MemoryEntry(t, ids, torch.zeros(len(ids), 4, 2), torch.zeros(len(ids), 4, 3), pinned)


def test_cap_evicts_the_oldest_unpinned_entry_first():
    bank = MemoryBank(max_permanent=3)
    assert bank.add(_entry(0, pinned=True), permanent=True) == []
    assert bank.add(_entry(5), permanent=True) == []
    assert bank.add(_entry(10), permanent=True) == []
    assert bank.add(_entry(15), permanent=True) == [5]
    assert bank.add(_entry(16), permanent=False) == []
    assert bank.frames == [0, 10, 15, 16]
    assert bank.add(_entry(20, pinned=True), permanent=True) == [10]
    assert bank.permanent_frames == [0, 15, 20]


def test_seeds_are_never_evicted_even_past_the_cap():
    bank = MemoryBank(max_permanent=1)
    bank.add(_entry(0, pinned=True), permanent=True)
    bank.add(_entry(3, pinned=True), permanent=True)
    assert bank.add(_entry(5), permanent=True) == [5]
    assert bank.permanent_frames == [0, 3]
    assert bank.frames == [0, 3, 5]  # kept as the temporary entry: the previous frame is read


def test_bad_cap():
    with pytest.raises(ValueError, match="max_memory_frames must be >= 1"):
        MemoryBank(0)


def test_read_selects_objects_and_entries_since_a_frame():
    bank = MemoryBank()
    k0 = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)
    bank.add(MemoryEntry(0, (1, 2), k0, torch.zeros(2, 4, 3), True), permanent=True)
    k1 = torch.full((3, 4, 2), 7.0)
    bank.add(MemoryEntry(1, (1, 2, 9), k1, torch.zeros(3, 4, 3), True), permanent=True)
    keys, values = bank.read((2,), since=0)
    assert keys.shape == (1, 8, 2) and values.shape == (1, 8, 3)
    assert torch.equal(keys[0, :4], k0[1]) and torch.equal(keys[0, 4:], k1[1])
    keys, _ = bank.read((9,), since=1)
    assert keys.shape == (1, 4, 2)


def _memory_per_step(n_frames, seeds, mem_every, cap):
    torch.manual_seed(0)
    session = VideoSession(STM("resnet18").eval(), mem_every=mem_every, max_memory_frames=cap)
    rng = np.random.default_rng(0)
    steps = []
    for t in range(n_frames):
        session.step(t, rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), seeds.get(t))
        steps.append(session.bank.frames)  # the frames frame t was segmented against
    return steps


def _seed(ids, h=32, w=48):
    m = np.zeros((h, w), np.uint8)
    for i, o in enumerate(ids):
        m[2 + 8 * i : 8 + 8 * i, 4:20] = o
    return m


def test_unbounded_memory_is_the_releases_schedule():
    steps = _memory_per_step(13, {0: _seed([1, 2])}, mem_every=5, cap=None)
    assert steps[0] == []  # the seed frame is not segmented
    for t in range(1, 13):
        permanent = [f for f in range(0, t - 1, 5)]
        assert steps[t] == permanent + [t - 1], t


def test_capped_memory_stays_flat_and_keeps_the_seed():
    steps = _memory_per_step(40, {0: _seed([1])}, mem_every=2, cap=3)
    assert max(len(s) for s in steps) == 4  # 3 permanent + the previous frame
    assert all(s[0] == 0 for s in steps[1:])
    assert steps[39] == [0, 36, 38]
    assert steps[38] == [0, 34, 36, 37]


def test_memory_schedule_counts_from_the_first_seed_and_pins_later_seeds():
    steps = _memory_per_step(12, {2: _seed([1]), 7: _seed([4])}, mem_every=3, cap=2)
    assert steps[0] == steps[1] == steps[2] == []  # nothing known before frame 2
    assert steps[3] == [2]
    assert steps[6] == [2, 5]
    assert steps[8] == [2, 7]  # 5 evicted for seed 7, which is pinned
    assert steps[9] == [2, 7, 8]  # 8 is a mem frame but the seeds fill the cap: temporary only
    assert steps[11] == [2, 7, 10]


class _ConcatBank:
    """The bank as it was: a list of entries concatenated on every read (the reference)."""

    def __init__(self, cap):
        self.cap, self.permanent, self.temporary = cap, [], None

    def add(self, entry, permanent):
        self.temporary = None
        if not permanent:
            self.temporary = entry
            return
        self.permanent.append(entry)
        while self.cap is not None and len(self.permanent) > self.cap:
            oldest = next((e for e in self.permanent if not e.pinned), None)
            if oldest is None:
                break
            self.permanent.remove(oldest)
            if oldest is entry:
                self.temporary = entry

    def read(self, ids, since):
        entries = [e for e in self.permanent if e.frame_index >= since]
        if self.temporary is not None and self.temporary.frame_index >= since:
            entries.append(self.temporary)
        rows = [[e.object_ids.index(o) for o in ids] for e in entries]
        keys = torch.cat([e.keys[r] for e, r in zip(entries, rows, strict=True)], dim=1)
        values = torch.cat([e.values[r] for e, r in zip(entries, rows, strict=True)], dim=1)
        return keys, values


@pytest.mark.parametrize("cap", [None, 1, 3])
def test_buffered_reads_equal_concatenating_every_entry(cap):
    """Random videos: objects join on seed frames, entries are permanent every few frames, some
    are pinned; every group's read equals the concatenation the bank used to do."""
    gen = torch.Generator().manual_seed(cap or 0)
    bank, reference = MemoryBank(cap), _ConcatBank(cap)
    ids, joined = (), {}
    for t in range(40):
        if t in (0, 7, 19):  # new objects: 9 joins alone, 4 and 6 together
            new = {0: (9,), 7: (4, 6), 19: (2,)}[t]
            joined.update({o: t for o in new})
            ids = tuple(sorted(ids + new))
        pinned = t in (0, 7, 19, 25)
        permanent = pinned or t % 3 == 0
        keys = torch.randn(len(ids), 6, 2, generator=gen)
        values = torch.randn(len(ids), 6, 3, generator=gen)
        entry = MemoryEntry(t, ids, keys, values, pinned)
        bank.add(entry, permanent)
        reference.add(entry, permanent)
        assert bank.frames == [e.frame_index for e in reference.permanent] + (
            [reference.temporary.frame_index] if reference.temporary is not None else []
        )
        groups = {}
        for o in ids:
            groups.setdefault(joined[o], []).append(o)
        for since, group in groups.items():
            got, want = bank.read(tuple(group), since), reference.read(tuple(group), since)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (t, group)
        mixed = (ids[0], ids[-1])  # rows that are not one group: gathered, still equal
        since = max(joined[o] for o in mixed)
        assert torch.equal(bank.read(mixed, since)[0], reference.read(mixed, since)[0])


def test_a_group_read_is_a_view_and_a_capped_bank_stops_growing():
    bank = MemoryBank(max_permanent=2)
    capacities = []
    for t in range(30):
        entry = MemoryEntry(t, (1, 2), torch.randn(2, 8, 2), torch.randn(2, 8, 3), t == 0)
        bank.add(entry, permanent=t % 2 == 0)
        keys, _ = bank.read((1, 2), since=0)
        assert keys._base is not None  # a slice of the buffer, no copy
        capacities.append(bank.capacity_nbytes())
    assert len(set(capacities[10:])) == 1  # flat once the cap is reached
    unbounded = MemoryBank()
    for t in range(30):
        unbounded.add(MemoryEntry(t, (1,), torch.randn(1, 8, 2), torch.randn(1, 8, 3), False), True)
    assert unbounded.nbytes() <= unbounded.capacity_nbytes() <= 2 * unbounded.nbytes()
