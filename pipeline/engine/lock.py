"""A lease in the store so two nightly runs never work on it at once.

Taking it is a create-only write of ``nightly/LOCK`` (atomic on S3 and local disks, see
:mod:`pipeline.table_io`). The holder renews it from a background thread every third of its
time-to-live; a holder that dies stops renewing, and once ``expires_at`` has passed the next run
replaces the lock. A second run that finds a live lock fails at once with :class:`LockHeldError`,
naming the holder and the expiry time.

Replacing an expired lock is delete-then-create: two runs that both find the same expired lock
race on the create, and exactly one wins (the loser sees :class:`LockHeldError`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from types import TracebackType

from pydantic import ValidationError

from pipeline import table_io
from schemas.common import StorageOptions
from schemas.nightly import LockDocument
from stm_core.errors import STMLabelError

log = logging.getLogger(__name__)


class LockHeldError(STMLabelError):
    """Another nightly run holds the store's lock."""


class StoreLock:
    """``with StoreLock(uri, owner, ttl, options): ...``: hold the lease for the block."""

    def __init__(
        self, uri: str, owner: str, ttl_seconds: float, options: StorageOptions | None = None
    ) -> None:
        self.uri, self.owner, self.ttl = uri, owner, float(ttl_seconds)
        self.options = options
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._document: LockDocument | None = None

    def _new_document(self) -> LockDocument:
        now = dt.datetime.now(dt.UTC)
        return LockDocument(
            owner=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            acquired_at=now,
            expires_at=now + dt.timedelta(seconds=self.ttl),
        )

    def read(self) -> LockDocument | None:
        try:
            return LockDocument.model_validate(table_io.read_json(self.uri, self.options))
        except FileNotFoundError:
            return None
        except (ValidationError, ValueError) as exc:  # a torn or foreign file: treat as expired
            log.warning("%s: unreadable lock (%s); treating it as expired", self.uri, exc)
            return LockDocument(
                owner="<unreadable>",
                host="?",
                pid=0,
                acquired_at=dt.datetime.min.replace(tzinfo=dt.UTC),
                expires_at=dt.datetime.min.replace(tzinfo=dt.UTC),
            )

    def acquire(self) -> None:
        for _ in range(2):
            document = self._new_document()
            try:
                table_io.write_json_atomic(self.uri, document, self.options, overwrite=False)
            except FileExistsError:
                held = self.read()
                if held is None:
                    continue  # released between our write and read: try again
                if held.expires_at > dt.datetime.now(dt.UTC):
                    raise LockHeldError(
                        f"{self.uri}: the store is locked by nightly run {held.owner!r} "
                        f"(host {held.host}, pid {held.pid}) until "
                        f"{held.expires_at.isoformat(timespec='seconds')} unless it renews it; "
                        "not starting a second run"
                    ) from None
                log.warning(
                    "%s: lock of %r expired at %s; taking it over",
                    self.uri,
                    held.owner,
                    held.expires_at,
                )
                table_io.delete(self.uri, self.options)
                continue
            self._document = document
            self._start_renewing()
            log.info("%s: lock taken by %s until %s", self.uri, self.owner, document.expires_at)
            return
        raise LockHeldError(f"{self.uri}: another run took the lock first; not starting")

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="lock-renewer", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception as exc:  # keep trying: a transient store error must not kill it
                log.warning("%s: could not renew the lock: %s", self.uri, exc)

    def renew(self) -> None:
        """Push ``expires_at`` one TTL ahead, if the lock is still ours."""
        held = self.read()
        if held is None or self._document is None or held.acquired_at != self._document.acquired_at:
            log.error("%s: the lock is no longer held by %s", self.uri, self.owner)
            return
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.ttl)
        self._document = held.model_copy(update={"expires_at": expires})
        table_io.write_json_atomic(self.uri, self._document, self.options)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        held = self.read()
        mine = self._document
        if held is not None and mine is not None and held.acquired_at == mine.acquired_at:
            table_io.delete(self.uri, self.options)
        self._document = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
