"""Join the Ray cluster a command should run on.

With an address (``--address`` or ``RAY_ADDRESS``, which ``ray job submit`` sets) this is
``ray.init(address)``. Without one a new local cluster is started, its dashboard on a free
loopback port, and ``RAY_API_SERVER_ADDRESS`` pointed at it before Ray starts any process: Ray
Train V2's placement-group cleaner polls the state API, and on a machine that runs other local
Ray clusters it may otherwise ask one of them, hear "no such actor", and tear down a healthy run.

A local cluster listens on loopback only: its node address is 127.0.0.1, so the GCS, the raylet,
the workers, the dashboard and its agents bind 127.0.0.1 (Ray otherwise binds most of them on
every interface). Ray 2.60 has no public option for it: ``ray.init(_node_ip_address="127.0.0.1")``
is replaced by the machine's address, and what keeps loopback is Ray's single-machine mode (the
one it uses on Windows and macOS, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), which Ray reads once,
when it is imported. :func:`_single_machine` switches it on around ``ray.init`` and back off.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import ray

SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": the node's address is 127.0.0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _single_machine() -> Iterator[None]:
    """Ray's single-machine mode for the processes started inside (the variable, inherited) and
    for this one (the constant Ray derived from it at import); both are restored on exit, so a
    later ``ray.init(address)`` in this process finds its node as usual."""
    from ray._private import ray_constants

    before_env = os.environ.get(SINGLE_MACHINE_ENV)
    before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = before_env


def connect(address: str | None = None, **init_kwargs) -> None:
    """Initialise Ray (a no-op when it is already initialised in this process)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **init_kwargs)
        return
    port = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    with _single_machine():
        ray.init(
            address="local",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            **init_kwargs,
        )
