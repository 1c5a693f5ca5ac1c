"""Preflight: before a command does any work, and before Ray starts, every store it names answers.

An input must read (``fs.info``, so a folder lists and a file exists); an output must take a
create-and-delete probe, ``<output>/.stm-label-probe-<12 hex>`` (hidden, so corpus discovery and
dataset readers would skip one left behind; a local folder that does not exist yet is created
for the probe and removed again). Each check takes seconds: on S3 the probe's client gives up
after two attempts of 5 s to connect. (gcsfs retries a refused connection six times with
backoff whatever its caller asks, about 35 s.)

A failure is a :class:`PreflightError` of one line, ``<key> <uri>: cannot <action>: <likely
cause>``, which every entrypoint prints and exits with code 2. The cause is read off the
exceptions s3fs, botocore, aiohttp, gcsfs and the OS raise (seen against moto and
gcp-storage-emulator on loopback, see ``tests/integration/test_preflight.py``):

- endpoint unreachable: ``EndpointConnectionError`` from a ``ConnectionRefusedError`` (nothing
  listens), a ``socket.gaierror`` (no such host) or a timeout;
- access denied: ``PermissionError`` from a ``ClientError`` (``InvalidAccessKeyId``,
  ``SignatureDoesNotMatch``, ``AccessDenied``, a bare 403 on HEAD), gcsfs's ``OSError("Forbidden:
  ...")`` or an ``HttpError`` 401; no credentials at all: botocore's ``NoCredentialsError``;
- no such bucket: ``FileNotFoundError`` from a ``NoSuchBucket`` ``ClientError`` on S3; gcsfs
  says only 404, so a missing path on an object store is followed by a look at its bucket;
- local paths: does not exist, not a directory (a part of the path is a file), permission denied.

Messages name keys and URIs, never a credential: only the first line of an exception's text is
shown, and only for a cause not recognised above.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schemas.common import StorageOptions
from schemas.label_job import LabelJobConfig
from schemas.nightly import NightlyConfig
from schemas.training import TrainConfig
from stm_core.errors import STMLabelError

from .storage import fsspec_kwargs, open_fs, split_uri

log = logging.getLogger(__name__)

PROBE_PREFIX = ".stm-label-probe-"
CHECKPOINT = "read the checkpoint"  # the words of pipeline.corpus_job.read_checkpoint's errors
# botocore settings of the probing client only: fail in seconds, not after minutes of retries
S3_PROBE_CONFIG = {
    "connect_timeout": 5,
    "read_timeout": 20,
    "retries": {"max_attempts": 2, "mode": "standard"},
}
DENIED_CODES = {
    "AccessDenied",
    "AccountProblem",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "401",
    "403",
}
CREDENTIALS_HINT = {
    "s3": "storage.key/secret, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or "
    "storage.anon for a public bucket",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or gcloud's application-default login, or "
    "storage.anon for a public bucket",
}


class PreflightError(STMLabelError):
    """A store a command needs does not answer as it must; the message is one line."""


# --- the checks -----------------------------------------------------------------------------


def check_readable(
    key: str,
    uri: str,
    options: StorageOptions | None = None,
    *,
    action: str = "read it",
    missing_ok: bool = False,
) -> None:
    """``uri`` (a file or a folder) exists and reads; ``missing_ok``: a path that does not exist
    passes as long as its store answers and its bucket exists (a store a command may find
    empty). Raises :class:`PreflightError` naming ``key`` and ``uri``."""
    options = options or StorageOptions()
    protocol, path = split_uri(uri)
    fs = None
    try:
        if protocol == "file":
            _read_local(path)
        else:
            fs = _probe_fs(uri, options)
            fs.info(path)
    except Exception as exc:  # noqa: BLE001 - every failure becomes its one-line cause
        cause = describe_cause(exc, uri, options, fs)
        if missing_ok and cause == MISSING:
            return
        raise PreflightError(f"{key} {uri}: cannot {action}: {cause}") from None


def check_writable(key: str, uri: str, options: StorageOptions | None = None) -> None:
    """A file can be created in the folder or prefix ``uri`` and deleted again. Nothing stays
    behind, unless the store lets the probe be written but not deleted (logged, not fatal: the
    command may never need to delete)."""
    options = options or StorageOptions()
    probe = f"{uri.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    protocol, path = split_uri(probe)
    tried = f"cannot write to it (tried to create and delete {probe})"
    if protocol == "file":
        try:
            _probe_local(Path(path))
        except Exception as exc:  # noqa: BLE001
            cause = describe_cause(exc, uri, options)
            raise PreflightError(f"{key} {uri}: {tried}: {cause}") from None
        return
    fs = None
    try:
        fs = _probe_fs(uri, options)
        fs.pipe_file(path, b"")
    except Exception as exc:  # noqa: BLE001
        cause = describe_cause(exc, uri, options, fs)
        raise PreflightError(f"{key} {uri}: {tried}: {cause}") from None
    try:
        fs.rm_file(path)
    except Exception as exc:  # noqa: BLE001
        log.warning(
            "%s %s: wrote the probe %s but cannot delete it (%s); delete it by hand",
            key,
            uri,
            probe,
            describe_cause(exc, probe, options, fs),
        )


def check_label_job(config: LabelJobConfig) -> None:
    """The corpus lists, the seed source reads, the output takes a probe and an explicit
    checkpoint reads. (The default checkpoint is resolved, and read, by
    ``pipeline.engine.run_inputs`` right after.)"""
    storage = config.storage
    check_readable("corpus_uri", config.corpus_uri, storage, action="list it")
    if config.seeds_uri is not None:
        check_readable("seeds_uri", config.seeds_uri, storage)
    if config.corrections_uri is not None:  # an empty folder (or none yet) is no corrections
        check_readable("corrections_uri", config.corrections_uri, storage, missing_ok=True)
    check_writable("output_uri", config.output_uri, storage)
    if config.checkpoint_uri is not None:
        check_readable("checkpoint_uri", config.checkpoint_uri, storage, action=CHECKPOINT)


def check_nightly(config: NightlyConfig) -> None:
    """The corpus and the held-out set list, the seeds and an initial checkpoint read, and the
    store takes a probe."""
    storage = config.storage
    check_readable("corpus_uri", config.corpus_uri, storage, action="list it")
    if config.seeds_uri is not None:
        check_readable("seeds_uri", config.seeds_uri, storage)
    check_readable("heldout_uri", config.heldout_uri, storage, action="list it")
    check_writable("store_uri", config.store_uri, storage)
    if config.initial_checkpoint_uri is not None:
        uri = config.initial_checkpoint_uri
        check_readable("initial_checkpoint_uri", uri, storage, action=CHECKPOINT)


def check_training(config: TrainConfig) -> None:
    """Every data source lists or reads, ``init_checkpoint`` reads and ``storage_path`` takes
    a probe."""
    storage, data = config.storage, config.data
    for name in ("folders", "photo_folders"):
        for i, uri in enumerate(getattr(data, name)):
            check_readable(f"data.{name}[{i}]", uri, storage, action="list it")
    for name in ("corpus_uri", "seeds_uri", "selection_uri"):
        uri = getattr(data, name)
        if uri is not None:
            check_readable(f"data.{name}", uri, storage)
    if config.init_checkpoint is not None:
        check_readable("init_checkpoint", config.init_checkpoint, storage, action=CHECKPOINT)
    check_writable("storage_path", config.storage_path, storage)


# --- causes ---------------------------------------------------------------------------------

MISSING = "does not exist"
NOT_A_DIRECTORY = "not a directory (a part of the path is a file)"


def describe_cause(
    exc: BaseException, uri: str, options: StorageOptions | None = None, fs: Any = None
) -> str:
    """The likely cause of ``exc``, raised while reaching ``uri``, in a few words a user can act
    on. ``fs``, the filesystem that raised, lets a missing path on an object store be told from
    a missing bucket."""
    options = options or StorageOptions()
    protocol, path = split_uri(uri)
    chain = list(_chain(exc))
    code = next((c for c in map(_service_code, chain) if c), None)
    bucket = path.split("/", 1)[0]
    if code == "NoSuchBucket":
        return f"no such bucket {bucket!r}"
    if any(type(e).__name__ == "NoCredentialsError" for e in chain):
        return f"no credentials found (set {CREDENTIALS_HINT.get(protocol, 'credentials')})"
    unreachable = _connection_failure(chain)
    if unreachable:
        return (
            f"endpoint {_endpoint(protocol, options)} unreachable ({unreachable}); check "
            "storage.endpoint_url (--storage-endpoint) and that the store is running"
        )
    if code in DENIED_CODES or any(_forbidden(e) for e in chain):
        if protocol == "file":
            return "permission denied"
        hint = CREDENTIALS_HINT.get(protocol, "the store's credentials")
        return (
            f"access denied{f' ({code})' if code and not code.isdigit() else ''}: the store "
            f"refused the credentials or they lack permission (check {hint})"
        )
    if any(isinstance(e, NotADirectoryError | FileExistsError) for e in chain):
        return NOT_A_DIRECTORY
    if any(isinstance(e, IsADirectoryError) for e in chain):
        return "is a folder, not a file"
    if any(isinstance(e, FileNotFoundError) for e in chain):
        if protocol != "file" and fs is not None and _bucket_missing(fs, bucket):
            return f"no such bucket {bucket!r}"
        return MISSING
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and its causes and contexts, outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _service_code(exc: BaseException) -> str | None:
    """botocore's ``Error.Code`` (``NoSuchBucket``, ``403``, ...) or gcsfs's HTTP code."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    code = getattr(exc, "code", None)
    return str(code) if isinstance(code, int) and code >= 400 else None


def _forbidden(exc: BaseException) -> bool:
    """A refusal: PermissionError (s3fs turns 403s into one; a local path), or gcsfs's plain
    ``OSError("Forbidden: ...")``."""
    return isinstance(exc, PermissionError) or (
        type(exc) is OSError and str(exc).startswith("Forbidden")
    )


def _connection_failure(chain: list[BaseException]) -> str | None:
    """Why no connection was made (refused, no such host, timed out), or None if one was."""
    for e in chain:
        if isinstance(e, socket.gaierror):
            return "host not found"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, TimeoutError) or "Timeout" in type(e).__name__:
            return "timed out"
        if "SSL" in type(e).__name__:
            return f"TLS failed: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
    names = {"EndpointConnectionError", "ClientConnectorError", "ConnectionClosedError"}
    for e in chain:
        if isinstance(e, ConnectionError) or type(e).__name__ in names:
            return "connection failed"
    return None


def _endpoint(protocol: str, options: StorageOptions) -> str:
    """The endpoint a client of ``protocol`` talks to, for messages (a URL, never a secret)."""
    if options.endpoint_url:
        return options.endpoint_url
    if protocol == "s3":
        env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return env or "(the default AWS S3 endpoint)"
    if protocol == "gs":
        return os.environ.get("STORAGE_EMULATOR_HOST") or "(the default Google Cloud endpoint)"
    return f"of {protocol}://"


def _bucket_missing(fs: Any, bucket: str) -> bool:
    try:
        return not fs.exists(bucket)
    except Exception:  # noqa: BLE001 - no answer about the bucket: say what was seen
        return False


# --- filesystems ----------------------------------------------------------------------------


def _probe_fs(uri: str, options: StorageOptions) -> Any:
    """The filesystem the checks use: for S3 an s3fs client with short timeouts and few retries
    and no listing cache (one instance per settings, kept by fsspec); otherwise the one
    :func:`pipeline.storage.open_fs` gives."""
    protocol, _ = split_uri(uri)
    if protocol != "s3":
        return open_fs(uri, options)[0]
    import fsspec

    # "Found credentials in environment variables", at INFO, once per client: the first line a
    # command would print, above the one line a failed check is
    logging.getLogger("aiobotocore.credentials").setLevel(logging.WARNING)

    kwargs = fsspec_kwargs(protocol, options)
    return fsspec.filesystem(
        "s3", **kwargs, config_kwargs=S3_PROBE_CONFIG, use_listings_cache=False
    )


def _read_local(path: str) -> None:
    """A local file opens, or a local folder lists (its first entry is read)."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        with os.scandir(path) as entries:
            next(entries, None)
    else:
        with open(path, "rb"):
            pass


def _probe_local(probe: Path) -> None:
    """Create and delete ``probe``, creating its missing parent folders first and removing
    them after, so a failed (or passed) check leaves the disk as it was."""
    folder = probe.parent.expanduser()
    created: list[Path] = []
    missing = []
    parent = folder
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
        with open(folder / probe.name, "xb"):
            pass
        (folder / probe.name).unlink()
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:  # something else wrote there meanwhile: leave it
                break
