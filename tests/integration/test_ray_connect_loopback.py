"""A local run (``stm-label label`` with no address: ``pipeline.ray_connect.connect()``) listens
on loopback only: every listening socket of its Ray (GCS, raylet, workers, dashboard and its
agents) is on 127.0.0.1, and the node's address is 127.0.0.1.

The run happens in a child Python, since connect() does nothing where Ray is already up, with
its own temp dir and its own ``HOME`` (a local ``ray.init()`` writes ``~/.ray/auth_token``, and
that file turns token auth on for every later ``ray start --head`` of this user).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300

CHILD = """
import json, os, sys, time
import psutil, ray
from ray._private import ray_constants
from pipeline.ray_connect import SINGLE_MACHINE_ENV, connect

connect(None, num_cpus=1, _temp_dir=sys.argv[1])
restored = os.environ.get(SINGLE_MACHINE_ENV) is None and ray_constants.ENABLE_RAY_CLUSTER
assert ray.get(ray.remote(num_cpus=0.5)(lambda: "ok").remote()) == "ok"  # a worker, listening

def listening():
    found = {}
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.setdefault(process.name(), set()).add(conn.laddr.ip)
        except psutil.Error:
            pass
    return found

deadline = time.monotonic() + 120  # the dashboard agent may bind after ray.init returns
while True:
    found = listening()
    if {"gcs_server", "raylet"} <= set(found) and any("DashboardAgent" in n for n in found):
        break
    if time.monotonic() > deadline:
        break
    time.sleep(1.0)
print(json.dumps({
    "node_ip": ray.util.get_node_ip_address(),
    "restored": bool(restored),
    "listening": {name: sorted(ips) for name, ips in found.items()},
}))
ray.shutdown()
"""


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def test_a_local_run_listens_on_loopback_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        OMP_NUM_THREADS="1",
    )
    temp_dir = tempfile.mkdtemp(prefix="rayloop", dir="/tmp")  # short: socket paths are limited
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, temp_dir],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    listening = report["listening"]
    assert {"gcs_server", "raylet"} <= set(listening), listening
    assert any("DashboardAgent" in name for name in listening), listening
    exposed = {name: ips for name, ips in listening.items() if not all(map(is_loopback, ips))}
    assert exposed == {}, listening
    assert report["node_ip"] == "127.0.0.1"
    assert report["restored"]  # a later ray.init(address) in the process sees Ray as it was
