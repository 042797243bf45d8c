"""`python -m workers up --cluster`: a local 6-node cluster, its settings in var/local.env (marker `cluster`).

On the fixed ports `up --cluster` uses (17000..17005); skipped, saying which, when one
is already taken on this machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cache.connections import Role, build_client
from cache.settings import Settings
from tests.waiting import wait_until
from workers.dev.localstack import LOCAL_CLUSTER_PORTS
from workers.dev.servers import PROJECT_ROOT

pytestmark = pytest.mark.cluster


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_cluster_starts_a_cluster_writes_its_nodes_and_stops(tmp_path: Path) -> None:
    busy = [port for port in LOCAL_CLUSTER_PORTS if _listening(port)]
    if busy:
        pytest.skip(f"the local cluster's ports are taken on this machine: {busy}")
    var, log = tmp_path / "var", tmp_path / "cluster.log"
    script = (
        "from pathlib import Path; from workers.dev.localstack import run_local_cluster; "
        f"run_local_cluster(Path({str(var)!r}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CACHE_REDIS"))}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: "Ctrl-C stops the cluster." in log.read_text(), 120, "the cluster is up")
        line = (var / "local.env").read_text().strip()
        expected = ",".join(f"127.0.0.1:{port}" for port in LOCAL_CLUSTER_PORTS)
        assert line == f"export REDIS_CLUSTER_NODES={expected}"
        client = build_client(Role.PRIMARY, Settings.from_env({"REDIS_CLUSTER_NODES": expected}))
        assert client.set("k", "v") and client.get("k") == b"v"
        client.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)
    assert process.returncode == 0, log.read_text()
    assert "local cluster stopped" in log.read_text()
    wait_until(lambda: not any(_listening(p) for p in LOCAL_CLUSTER_PORTS), 30, "every node stopped")
