"""`free_port`: local servers' ports stay clear of outgoing connections and of each other."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.dev import servers
from workers.dev.servers import BUS_PORT_OFFSET, free_port

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.fixture
def few_ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[range]:
    """Ten ports of this process's slice, none handed out yet."""
    ports = range(servers.PORTS.start, servers.PORTS.start + 10)
    monkeypatch.setattr(servers, "PORTS", ports)
    monkeypatch.setattr(servers, "_handed_out", set())
    yield ports


@pytest.mark.skipif(not EPHEMERAL_RANGE.exists(), reason="Linux only")
def test_server_and_bus_ports_are_below_the_kernels_ephemeral_range() -> None:
    ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    assert servers.PORTS.stop - 1 + BUS_PORT_OFFSET < ephemeral_low


def test_a_port_is_handed_out_once_while_the_range_lasts(few_ports: range) -> None:
    taken = [free_port() for _ in few_ports]
    assert sorted(taken) == list(few_ports)  # a stopped server's port is not given to another
    assert free_port() in few_ports  # then ports are reused rather than refused


def test_a_port_in_use_or_with_its_bus_port_in_use_is_skipped(few_ports: range) -> None:
    with socket.socket() as busy, socket.socket() as busy_bus:
        busy.bind(("127.0.0.1", few_ports[0]))
        busy_bus.bind(("127.0.0.1", few_ports[1] + BUS_PORT_OFFSET))
        taken = {free_port(with_bus_port=True) for _ in range(8)}
    assert taken == set(few_ports[2:])


def test_no_free_port_left_is_an_error_naming_the_range(
    few_ports: range, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "PORTS", few_ports[:1])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", few_ports[0]))
        with pytest.raises(RuntimeError, match=f"no free port in {few_ports[0]}-{few_ports[0]}"):
            free_port()
