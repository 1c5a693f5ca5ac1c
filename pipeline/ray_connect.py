"""Join the Ray cluster a command should run on.

With an address (``--address`` or ``RAY_ADDRESS``, which ``ray job submit`` sets) this is
``ray.init(address)``. Without one a new local cluster is started, its dashboard on a free
loopback port, and ``RAY_API_SERVER_ADDRESS`` pointed at it before Ray starts any process: Ray
Train V2's placement-group cleaner polls the state API, and on a machine that runs other local
Ray clusters it may otherwise ask one of them, hear "no such actor", and tear down a healthy run.
"""

from __future__ import annotations

import os
import socket

import ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    ray.init(
        address="local",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        **init_kwargs,
    )
