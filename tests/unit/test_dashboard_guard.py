"""The dashboard's Host and same-origin rules, pure (marker `security`)."""

from __future__ import annotations

import pytest

from workers.dashboard.guard import allowed_hosts, host_name, same_origin

pytestmark = pytest.mark.security

DEFAULT = allowed_hosts("127.0.0.1", ())


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:9181", "127.0.0.1"),
        ("LocalHost:9181", "localhost"),
        ("localhost.", "localhost"),
        ("[::1]:9181", "[::1]"),
        ("[::1]", "[::1]"),
        ("[::1", ""),
        ("jobs.example.com", "jobs.example.com"),
        ("localhost:9181@evil.example", "localhost:9181@evil.example"),
        ("", ""),
    ],
)
def test_host_name_drops_the_port_and_case(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize("host", ["127.0.0.1:9181", "localhost:1", "[::1]:9181", "LOCALHOST"])
def test_loopback_names_are_allowed_by_default(host: str) -> None:
    assert host_name(host) in DEFAULT


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:9181",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
        "0.0.0.0",
        "[::2]",
        "[::ffff:127.0.0.1]",
        "localhost:9181@evil.example",
        "",
    ],
)
def test_other_hosts_are_not(host: str) -> None:
    assert host_name(host) not in DEFAULT


def test_the_bind_address_and_extra_hosts_are_added() -> None:
    hosts = allowed_hosts("10.0.0.5", ("jobs.example.com", "[fd00::1]"))
    assert {"10.0.0.5", "jobs.example.com", "[fd00::1]", "localhost"} <= hosts
    assert "[fd00::2]" in allowed_hosts("fd00::2", ())
    assert "dash.internal" in allowed_hosts("dash.internal", ())


@pytest.mark.parametrize(
    ("origin", "referer", "ok"),
    [
        ("http://127.0.0.1:9181", None, True),
        ("https://127.0.0.1:9181", None, True),  # behind a TLS proxy
        (None, "http://127.0.0.1:9181/0/view/jobs", True),
        ("http://evil.example", None, False),
        ("http://evil.example", "http://127.0.0.1:9181/", False),  # Origin wins when present
        ("http://127.0.0.1:9182", None, False),
        ("http://127.0.0.1:9181.evil.example", None, False),
        ("null", None, False),
        ("", None, False),
        (None, None, False),
        (None, "http://evil.example/?http://127.0.0.1:9181", False),
        (None, "/relative", False),
    ],
)
def test_same_origin(origin: str | None, referer: str | None, ok: bool) -> None:
    assert same_origin(origin, referer, "127.0.0.1:9181") is ok
