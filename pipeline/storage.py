"""Object-storage handles from a URI plus :class:`~schemas.common.StorageOptions`.

fsspec (s3fs, gcsfs, local) for reading and writing files; pyarrow filesystems where Ray Train or
Parquet need one. Credentials are passed through, never logged.

``gs://`` (and ``gcs://``) goes through gcsfs's plain JSON-API filesystem,
``gcsfs.core.GCSFileSystem``, not the class fsspec registers for "gs": since gcsfs 2026.8 that
one (``ExtendedGcsFileSystem``) first asks the gRPC Storage Control API for every bucket's
layout, which an emulator or any custom endpoint does not serve (each call then waits out a
60 s retry budget). Zonal (Rapid) buckets, which need that gRPC path, are therefore not
supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from schemas.common import StorageOptions


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ("s3", "bucket/key"); a local path -> ("file", path). ``gcs://``
    is reported as "gs", the name gcsfs gives its URIs back with, so both spellings compare
    equal."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # "C:" on Windows
        return "file", parsed.path if parsed.scheme == "file" else uri
    protocol = "gs" if parsed.scheme == "gcs" else parsed.scheme
    return protocol, (parsed.netloc + parsed.path).rstrip("/")


def fs_path(uri: str) -> str:
    """The path inside its filesystem of a URI (``s3://b/k`` -> ``b/k``), as fsspec calls take."""
    return split_uri(uri)[1]


def fsspec_kwargs(protocol: str, options: StorageOptions) -> dict[str, Any]:
    """Constructor arguments of the fsspec filesystem for ``protocol`` (none for local paths)."""
    if protocol == "gs":
        return _gcsfs_kwargs(options)
    if protocol != "s3":
        return {}
    kwargs: dict[str, Any] = {"anon": options.anon}
    if options.key is not None:
        kwargs["key"] = options.key.get_secret_value()
    if options.secret is not None:
        kwargs["secret"] = options.secret.get_secret_value()
    client: dict[str, Any] = {}
    if options.endpoint_url:
        client["endpoint_url"] = options.endpoint_url
    if options.region:
        client["region_name"] = options.region
    if client:
        kwargs["client_kwargs"] = client
    return kwargs


def _gcsfs_kwargs(options: StorageOptions) -> dict[str, Any]:
    """gcsfs settings: ``endpoint_url`` as is (an emulator or a private endpoint; gcsfs also
    honours ``STORAGE_EMULATOR_HOST``), ``anon`` as ``token="anon"``. Otherwise credentials and
    project come from the environment through gcsfs's own chain (google.auth's default:
    ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's application-default login, the metadata server
    on GCP), which ends in anonymous access when it finds nothing, so missing credentials show
    as "Forbidden"/401 errors. ``key``, ``secret`` and ``region`` are S3 settings, not used here.

    The listing cache is off: workers and other clients write behind this process's back, and a
    cached listing would hide their objects (a run's shards, a rewritten seed table)."""
    kwargs: dict[str, Any] = {"use_listings_cache": False}
    if options.anon:
        kwargs["token"] = "anon"
    if options.endpoint_url:
        kwargs["endpoint_url"] = options.endpoint_url.rstrip("/")
    return kwargs


def pyarrow_filesystem(uri: str, options: StorageOptions) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it (no scheme), as Ray Train's RunConfig wants:
    it rejects ``s3://`` URIs when a filesystem is given."""
    protocol, path = split_uri(uri)
    if protocol == "file":
        # Absolute: Ray Train's workers chdir to their own session folder before training, so a
        # relative path would put their checkpoints somewhere else than the driver looks.
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    if protocol == "gs":
        # pyarrow's own GcsFileSystem would need the credentials mapped a second time; wrapping
        # the gcsfs instance keeps one configuration (and works with any endpoint).
        fs, path = open_fs(uri, options)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    if protocol != "s3":
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    kwargs: dict[str, Any] = {"anonymous": options.anon}
    if options.key is not None and options.secret is not None:
        kwargs["access_key"] = options.key.get_secret_value()
        kwargs["secret_key"] = options.secret.get_secret_value()
    if options.region:
        kwargs["region"] = options.region
    if options.endpoint_url:
        endpoint = urlparse(options.endpoint_url)
        kwargs["endpoint_override"] = endpoint.netloc or endpoint.path
        kwargs["scheme"] = endpoint.scheme or "https"
    return pafs.S3FileSystem(**kwargs), path


def open_fs(uri: str, options: StorageOptions | None = None) -> tuple[Any, str]:
    """An fsspec filesystem for ``uri`` and the path inside it (no scheme).

    fsspec caches instances per arguments, so every call with the same options shares one s3fs
    instance and its listing cache: callers that need fresh listings must invalidate it (see
    ``pipeline.table_io``).
    """
    import fsspec

    protocol, path = split_uri(uri)
    kwargs = fsspec_kwargs(protocol, options or StorageOptions())
    if protocol == "gs":
        from gcsfs.core import GCSFileSystem  # the JSON-API class: see the module docstring

        return GCSFileSystem(**kwargs), path
    return fsspec.filesystem(protocol, **kwargs), path
