"""``pipeline.preflight.describe_cause`` on exceptions as the storage clients raise them, for the
causes the loopback servers of ``tests/integration/test_preflight.py`` cannot produce: no
credentials at all, a host that does not resolve, a timeout, gcsfs's refusals."""

from __future__ import annotations

import socket

import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, NoCredentialsError

from pipeline.preflight import describe_cause
from schemas.common import StorageOptions


def raised(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` raised from ``inner``, as a client wraps the error it met."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


class HttpError(Exception):
    """gcsfs.retry.HttpError's shape: an HTTP ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(f"{code}: Unauthorized")
        self.code = code


@pytest.mark.parametrize(
    ("exc", "uri", "cause"),
    [
        (NoCredentialsError(), "s3://b/k", "no credentials found (set storage.key/secret"),
        (
            raised(
                EndpointConnectionError(endpoint_url="http://minio:9000/b"),
                socket.gaierror(-2, "Name or service not known"),
            ),
            "s3://b/k",
            "endpoint http://minio:9000 unreachable (host not found)",
        ),
        (
            ConnectTimeoutError(endpoint_url="http://10.0.0.1:9000/b"),
            "s3://b/k",
            "endpoint http://minio:9000 unreachable (timed out)",
        ),
        (OSError("Forbidden: b/o/k\nno access"), "gs://b/k", "access denied: the store refused"),
        (HttpError(401), "gs://b/k", "access denied: the store refused"),
        (PermissionError(13, "Permission denied"), "/root/x", "permission denied"),
        (ValueError("something\nelse"), "s3://b/k", "ValueError: something"),
    ],
)
def test_causes(exc: BaseException, uri: str, cause: str) -> None:
    options = StorageOptions(endpoint_url="http://minio:9000")
    text = describe_cause(exc, uri, options)
    assert text.startswith(cause), text
    assert "\n" not in text


def test_gcs_hint_names_google_credentials() -> None:
    text = describe_cause(OSError("Forbidden: b/o/k"), "gs://b/k")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in text and "AWS" not in text
