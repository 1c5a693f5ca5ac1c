"""Fixtures for pipeline tests: a local Ray, an S3 endpoint on loopback (moto) and a Google Cloud
Storage endpoint on loopback (gcp-storage-emulator).

All are session-scoped because each costs seconds to start (Ray 10-15 s on this loaded machine) and
holds no per-test state that matters: tests write under their own fresh prefix
(``s3_prefix``, ``gs_prefix``) and Ray jobs clean up after themselves.

Credentials are fake (``testing``) and set in the environment *before* Ray starts, so Ray's
workers inherit them and nothing can reach a real AWS account with a developer's own keys.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from schemas.common import StorageOptions

if TYPE_CHECKING:
    import gcsfs
    import s3fs

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Settings that could send a client to a real account or endpoint instead of the loopback one.
_CLEARED_AWS_ENV = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
RAY_NUM_CPUS = 2


@pytest.fixture(scope="session")
def aws_test_env() -> Iterator[dict[str, str]]:
    """Fake AWS credentials in ``os.environ`` for the session; the previous values come back
    at the end."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _CLEARED_AWS_ENV:
            mp.delenv(name, raising=False)
        for name, value in FAKE_AWS_ENV.items():
            mp.setenv(name, value)
        yield dict(FAKE_AWS_ENV)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local(aws_test_env: dict[str, str]) -> Iterator[object]:
    """A fresh local Ray with ``RAY_NUM_CPUS`` CPUs; yields the context of ``ray.init``.

    ``address="local"`` so a cluster someone else started is never joined. The dashboard runs on
    a free port and ``RAY_API_SERVER_ADDRESS`` (inherited by every Ray process) points at it:
    Ray Train V2's placement-group cleaner asks the state API every second whether the train
    controller is alive, and without this address it auto-detects "the" local cluster. With the
    dashboard off, or with other developers' clusters on this machine, it can ask the wrong
    one, hear "no such actor", and remove the run's placement group, killing a healthy run
    ("Destroying worker since its placement group was removed").
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
        context = ray.init(
            address="local",
            num_cpus=RAY_NUM_CPUS,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
        )
        try:
            yield context
        finally:
            ray.shutdown()


@dataclass(frozen=True)
class S3Server:
    """A moto S3 endpoint on 127.0.0.1 with one bucket.

    ``fs`` is an s3fs filesystem without instance or listing caches (Ray workers write behind its
    back, and a cached listing would be stale); ``storage`` is what configs take.
    """

    endpoint_url: str
    bucket: str
    fs: s3fs.S3FileSystem
    storage: StorageOptions

    def uri(self, key: str = "") -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.bucket}/{key}".rstrip("/")


@pytest.fixture(scope="session")
def s3_server(aws_test_env: dict[str, str]) -> Iterator[S3Server]:
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        fs = s3fs.S3FileSystem(
            key=aws_test_env["AWS_ACCESS_KEY_ID"],
            secret=aws_test_env["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": endpoint},
            skip_instance_cache=True,
            use_listings_cache=False,
        )
        bucket = "stm-test"
        fs.mkdir(bucket)
        storage = StorageOptions(
            endpoint_url=endpoint,
            key=aws_test_env["AWS_ACCESS_KEY_ID"],
            secret=aws_test_env["AWS_SECRET_ACCESS_KEY"],
        )
        yield S3Server(endpoint_url=endpoint, bucket=bucket, fs=fs, storage=storage)
    finally:
        server.stop()


@pytest.fixture
def s3_prefix(s3_server: S3Server) -> str:
    """A fresh key prefix in the bucket (``s3://`` URI), so tests never see each other's
    objects."""
    return s3_server.uri(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def subprocess_env(aws_test_env: dict[str, str]) -> dict[str, str]:
    """Environment for a child Python that imports the project: the fake AWS settings, the
    repository on ``PYTHONPATH`` and unbuffered output."""
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # a SIGKILLed child loses whatever it had buffered
    return env


# --- Google Cloud Storage: gcp-storage-emulator on loopback ----------------------------------

# Settings that could send a Google client to a real account or endpoint. The tests pass
# ``token="anon"`` and the emulator's endpoint explicitly; these are a second guard for any code
# path that opens ``gs://`` without them: the JSON API goes to the emulator, and the credential
# chain finds no key file, no gcloud login and no metadata server (a closed loopback port) before
# falling back to anonymous access. google.auth reads the metadata settings when it is first
# imported (with gcsfs), so they guard only a process that had not imported gcsfs before.
_CLEARED_GOOGLE_ENV = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
    "GCSFS_DEFAULT_PROJECT",
)


@dataclass(frozen=True)
class GcsServer:
    """A gcp-storage-emulator endpoint on 127.0.0.1 (in memory) with one bucket.

    ``fs`` is a gcsfs filesystem without instance or listing caches, anonymous; ``storage`` is
    what configs take (``endpoint_url`` + ``anon``). The emulator ignores upload preconditions
    (``ifGenerationMatch``), so create-only writes are checked, not raced, against it.
    """

    endpoint_url: str
    bucket: str
    fs: gcsfs.GCSFileSystem
    storage: StorageOptions

    def uri(self, key: str = "") -> str:
        """``gs://<bucket>/<key>``."""
        return f"gs://{self.bucket}/{key}".rstrip("/")


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)  # a line per request
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "stm-test"
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    with pytest.MonkeyPatch.context() as mp:
        for name in _CLEARED_GOOGLE_ENV:
            mp.delenv(name, raising=False)
        mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
        mp.setenv("CLOUDSDK_CONFIG", str(tmp_path_factory.mktemp("gcloud-config")))  # empty
        mp.setenv("NO_GCE_CHECK", "true")
        mp.setenv("GCE_METADATA_HOST", f"127.0.0.1:{free_port()}")
        mp.setenv("GCE_METADATA_IP", f"127.0.0.1:{free_port()}")
        from gcsfs.core import GCSFileSystem  # after the settings above: see _CLEARED_GOOGLE_ENV

        server.start()
        _quiet_disconnects(server)
        try:
            fs = GCSFileSystem(
                endpoint_url=endpoint,
                token="anon",
                skip_instance_cache=True,
                use_listings_cache=False,
            )
            storage = StorageOptions(endpoint_url=endpoint, anon=True)
            yield GcsServer(endpoint_url=endpoint, bucket=bucket, fs=fs, storage=storage)
        finally:
            server.stop()


def _quiet_disconnects(server: object) -> None:
    """Drop the emulator's traceback for a client that hung up before the answer. gcsfs's
    ``info`` races an object GET against a listing and cancels the loser, so every existence
    check prints one, burying a failing test's own output. Other errors are still printed."""
    httpd = getattr(getattr(server, "_api", None), "_httpd", None)  # private: best effort
    if httpd is None:
        return
    report = httpd.handle_error

    def handle_error(request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            report(request, client_address)

    httpd.handle_error = handle_error


@pytest.fixture
def gs_prefix(gcs_server: GcsServer) -> str:
    """A fresh key prefix in the emulator's bucket (``gs://`` URI)."""
    return gcs_server.uri(f"t-{uuid.uuid4().hex[:12]}")
