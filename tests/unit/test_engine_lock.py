"""The store lock (pipeline.engine.lock.StoreLock) on a local path: create-only acquire, a
holder named in the refusal, take-over of expired or unreadable locks, renewal from the
background thread, and a release that never deletes someone else's lock."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import table_io
from pipeline.engine.lock import LockHeldError, StoreLock
from schemas.nightly import LockDocument


@pytest.fixture()
def uri(tmp_path: Path) -> str:
    return str(tmp_path / "nightly" / "LOCK")


@pytest.fixture()
def locks() -> Iterator[list[StoreLock]]:
    """Locks a test took; released at the end so no renewer thread outlives its test."""
    taken: list[StoreLock] = []
    yield taken
    for lock in taken:
        lock.release()


def take(uri: str, owner: str, locks: list[StoreLock], ttl: float = 60.0) -> StoreLock:
    lock = StoreLock(uri, owner, ttl)
    locks.append(lock)
    lock.acquire()
    return lock


def stored(uri: str) -> LockDocument:
    return LockDocument.model_validate(table_io.read_json(uri))


def write_lock(uri: str, owner: str, expires_in: float) -> LockDocument:
    now = dt.datetime.now(dt.UTC)
    document = LockDocument(
        owner=owner,
        host="elsewhere",
        pid=4242,
        acquired_at=now - dt.timedelta(hours=1),
        expires_at=now + dt.timedelta(seconds=expires_in),
    )
    table_io.write_json_atomic(uri, document)
    return document


def test_acquire_writes_a_lock_document(uri: str, locks: list[StoreLock]) -> None:
    before = dt.datetime.now(dt.UTC)
    take(uri, "night-1", locks, ttl=60)
    document = stored(uri)
    assert (document.owner, document.pid) == ("night-1", os.getpid())
    assert before <= document.acquired_at <= dt.datetime.now(dt.UTC)
    assert document.expires_at - document.acquired_at == dt.timedelta(seconds=60)


def test_a_second_owner_is_refused_with_the_holder_named(uri: str, locks: list[StoreLock]) -> None:
    take(uri, "night-1", locks)
    with pytest.raises(LockHeldError, match="night-1") as info:
        take(uri, "night-2", locks)
    assert uri in str(info.value)
    assert stored(uri).owner == "night-1"


def test_release_removes_the_file_and_another_can_take_it(uri: str, locks: list[StoreLock]) -> None:
    first = take(uri, "night-1", locks)
    first.release()
    assert not Path(uri).exists()
    take(uri, "night-2", locks)
    assert stored(uri).owner == "night-2"


def test_the_context_manager_holds_the_lock_for_the_block(uri: str) -> None:
    with StoreLock(uri, "night-1", 60):
        assert stored(uri).owner == "night-1"
    assert not Path(uri).exists()


def test_an_expired_lock_is_taken_over(uri: str, locks: list[StoreLock]) -> None:
    write_lock(uri, "crashed-night", expires_in=-5)
    take(uri, "night-2", locks)
    assert stored(uri).owner == "night-2"


def test_a_live_lock_of_another_process_is_respected(uri: str, locks: list[StoreLock]) -> None:
    write_lock(uri, "busy-night", expires_in=600)
    with pytest.raises(LockHeldError, match="busy-night"):
        take(uri, "night-2", locks)
    assert stored(uri).owner == "busy-night"


@pytest.mark.parametrize("content", [b"{not json", b'{"owner": "x"}', b""])
def test_an_unreadable_lock_is_treated_as_expired(
    uri: str, locks: list[StoreLock], content: bytes
) -> None:
    table_io.write_bytes(uri, content)
    take(uri, "night-2", locks)
    assert stored(uri).owner == "night-2"


def test_renew_pushes_expiry_forward(uri: str, locks: list[StoreLock]) -> None:
    lock = take(uri, "night-1", locks, ttl=600)
    first = stored(uri)
    time.sleep(0.01)
    lock.renew()
    renewed = stored(uri)
    assert renewed.expires_at > first.expires_at
    assert renewed.acquired_at == first.acquired_at


def test_the_renewer_keeps_the_lock_alive_past_its_ttl(uri: str, locks: list[StoreLock]) -> None:
    take(uri, "night-1", locks, ttl=0.3)
    time.sleep(1.0)  # more than three TTLs: without renewal the lock would have expired
    assert stored(uri).expires_at > dt.datetime.now(dt.UTC)
    with pytest.raises(LockHeldError, match="night-1"):
        take(uri, "night-2", locks)


def test_release_does_not_delete_a_lock_someone_else_took_over(
    uri: str, locks: list[StoreLock]
) -> None:
    stalled = take(uri, "night-1", locks, ttl=600)
    theirs = write_lock(uri, "night-2", expires_in=600)  # night-2 took over meanwhile
    stalled.release()
    assert stored(uri) == theirs


def test_renew_does_not_overwrite_a_lock_someone_else_took_over(
    uri: str, locks: list[StoreLock]
) -> None:
    stalled = take(uri, "night-1", locks, ttl=600)
    theirs = write_lock(uri, "night-2", expires_in=600)
    stalled.renew()
    assert stored(uri) == theirs
