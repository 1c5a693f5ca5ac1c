"""Whole-object reads and atomic writes of Parquet tables and JSON documents, anywhere fsspec
reaches (a local path, ``file://``, ``s3://``, ``gs://``, ...).

Writes are all-or-nothing. The bytes are made in memory first (a shard's Parquet is a few MB),
then stored in one step:

- object stores: one ``pipe_file`` call, i.e. one PUT (s3fs switches to a multipart upload only
  above 100 MiB, which S3 also makes visible only on completion and s3fs aborts on error; gcsfs
  to a resumable upload above 50 MiB, likewise visible only once complete);
- local files: a hidden temp file in the destination folder (``.<name>.<random>.tmp``, which
  ``pyarrow.dataset``, DuckDB and Polars globs skip), fsynced, then ``os.replace``d onto the
  name, so a reader sees the old file or the new one, never a partial one.

Streaming with ``pq.ParquetWriter`` is avoided on purpose: an exception inside its ``with``
block still commits a valid file holding only the rows written so far.

``overwrite=False`` makes a write create-only: ``FileExistsError`` if the name is taken, decided
atomically (``os.link`` locally, ``If-None-Match: *`` on S3; a check-then-write elsewhere). On
``gs://`` it is a check-then-write *plus* the upload precondition ``ifGenerationMatch=0`` (gcsfs
``mode="create"``), which GCS itself decides atomically, answering 412 (FileExistsError from
gcsfs) to the losing writer. The tests' gcp-storage-emulator ignores preconditions, so there
(and on any endpoint like it) only the check holds and two racing writers may both succeed;
the precondition path is therefore not covered by the tests.

Listings and existence checks first drop s3fs's listing cache for the path: fsspec shares one
filesystem instance per set of options, and its cache does not see other writers (gcsfs is
opened with its listing cache off, ``pipeline.storage``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic_core import to_jsonable_python

from pipeline.storage import open_fs, split_uri
from schemas.common import StorageOptions
from schemas.tables import TableError

logger = logging.getLogger(__name__)

PARQUET_COMPRESSION = "zstd"


# --- writing --------------------------------------------------------------------------------


def parquet_bytes(table: pa.Table, compression: str = PARQUET_COMPRESSION) -> bytes:
    """``table`` as the bytes of one Parquet file. String columns are dictionary-encoded (run
    and video ids repeat on every row); the binary RLE column is not."""
    dictionary = [f.name for f in table.schema if pa.types.is_string(f.type)]
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, use_dictionary=dictionary)
    return sink.getvalue().to_pybytes()


def write_bytes(
    uri: str, data: bytes, options: StorageOptions | None = None, *, overwrite: bool = True
) -> None:
    """Store ``data`` at ``uri`` whole and atomically (see the module docstring)."""
    protocol, path = split_uri(uri)
    if protocol == "file":
        _write_local(path, data, overwrite)
        return
    fs, path = open_fs(uri, options)
    if overwrite:
        fs.pipe_file(path, data)
    elif protocol == "s3":
        fs.pipe_file(path, data, mode="create")  # FileExistsError on HTTP 412
    else:
        _invalidate(fs, path)
        if fs.exists(path):  # not atomic: two writers may both pass this check
            raise FileExistsError(uri)
        if protocol == "gs":  # ifGenerationMatch=0 closes the race on GCS itself
            try:
                fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                raise FileExistsError(uri) from None  # gcsfs names the upload URL instead
        else:
            fs.pipe_file(path, data)
    _invalidate(fs, path)
    logger.debug("wrote %d bytes to %s", len(data), uri)


def write_table(
    table: pa.Table,
    uri: str,
    options: StorageOptions | None = None,
    *,
    overwrite: bool = True,
    compression: str = PARQUET_COMPRESSION,
) -> int:
    """Write ``table`` as one Parquet file at ``uri``, atomically; returns its size in bytes.
    The caller checks the table against its contract (``schemas.tables``) first."""
    data = parquet_bytes(table, compression)
    write_bytes(uri, data, options, overwrite=overwrite)
    return len(data)


def write_json_atomic(
    uri: str, obj: Any, options: StorageOptions | None = None, *, overwrite: bool = True
) -> None:
    """``obj`` (dicts, lists, pydantic models, datetimes, ...) as indented JSON at ``uri``.
    Pydantic secrets are written as ``**********``, never in clear."""
    text = json.dumps(to_jsonable_python(obj), indent=2, sort_keys=True, allow_nan=False)
    write_bytes(uri, (text + "\n").encode("utf-8"), options, overwrite=overwrite)


def _write_local(path: str, data: bytes, overwrite: bool) -> None:
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would make the final file 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic create-only: FileExistsError if the name exists
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Make the rename durable across a power cut (best effort: not every OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- reading --------------------------------------------------------------------------------


def read_bytes(uri: str, options: StorageOptions | None = None) -> bytes:
    """The whole object at ``uri`` in one GET (FileNotFoundError if absent)."""
    protocol, path = split_uri(uri)
    if protocol == "file":
        with open(path, "rb") as f:
            return f.read()
    fs, path = open_fs(uri, options)
    _invalidate(fs, path)  # a cached size/etag of an overwritten object fails the read
    return fs.cat_file(path)


def read_json(uri: str, options: StorageOptions | None = None) -> Any:
    """The JSON document at ``uri``; TableError naming it if it is not valid JSON."""
    try:
        return json.loads(read_bytes(uri, options))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TableError(uri, f"not valid JSON: {exc}") from exc


def read_table(
    uri: str, options: StorageOptions | None = None, *, columns: list[str] | None = None
) -> pa.Table:
    """The Parquet file at ``uri`` (read whole, then parsed in memory); TableError naming the
    file if it is not Parquet. Check it against its contract with ``TableSpec.check``."""
    data = read_bytes(uri, options)
    try:
        return pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TableError(uri, f"not a readable Parquet file: {exc}") from exc


def exists(uri: str, options: StorageOptions | None = None) -> bool:
    """Whether an object (or folder) exists at ``uri``, asked of the store, not of a cache."""
    protocol, path = split_uri(uri)
    if protocol == "file":
        return os.path.exists(path)
    fs, path = open_fs(uri, options)
    _invalidate(fs, path)
    return bool(fs.exists(path))


def list_files(
    prefix_uri: str,
    options: StorageOptions | None = None,
    *,
    suffix: str = "",
    include_hidden: bool = False,
) -> list[str]:
    """URIs of the files under ``prefix_uri`` (recursively), sorted, in the same form as the
    prefix (``s3://...``, ``gs://...``, ``file://...`` or a plain path); ``[]`` if there is
    nothing there.
    Names starting with ``.`` or ``_`` (temp files, markers) are left out unless
    ``include_hidden``."""
    protocol, path = split_uri(prefix_uri)
    root = prefix_uri.rstrip("/")
    if protocol == "file":
        relatives = _walk_local(path)
    else:
        fs, path = open_fs(prefix_uri, options)
        _invalidate(fs, path)
        try:
            found = fs.find(path)
        except FileNotFoundError:
            found = []
        inside = path.rstrip("/") + "/"  # so "run_id=a" never matches a sibling "run_id=ab"
        relatives = [
            "" if f == path else f[len(inside) :]
            for f in found
            if f == path or f.startswith(inside)
        ]
    out = []
    for relative in relatives:
        name = relative.rsplit("/", 1)[-1]
        if name.endswith(suffix) and (include_hidden or not name.startswith((".", "_"))):
            out.append(f"{root}/{relative}" if relative else root)
    return sorted(out)


def delete(uri: str, options: StorageOptions | None = None) -> bool:
    """Remove the object at ``uri``; False if there was none."""
    protocol, path = split_uri(uri)
    if protocol == "file":
        try:
            os.remove(path)
        except FileNotFoundError:
            return False
        return True
    fs, path = open_fs(uri, options)
    _invalidate(fs, path)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        return False
    finally:
        _invalidate(fs, path)
    return True


def _walk_local(path: str) -> list[str]:
    """Files under a local ``path`` as "/"-joined paths relative to it ("" if it is a file)."""
    if os.path.isfile(path):
        return [""]
    out = []
    for folder, _, files in os.walk(path):
        rel = os.path.relpath(folder, path)
        for name in files:
            out.append(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
    return out


def _invalidate(fs: Any, path: str) -> None:
    """Drop cached listings of ``path``, its parents and everything under it."""
    fs.invalidate_cache(path)
    cache = getattr(fs, "dircache", None)
    if cache:
        prefix = path.rstrip("/") + "/"
        for key in [k for k in list(cache) if k.startswith(prefix)]:
            cache.pop(key, None)
