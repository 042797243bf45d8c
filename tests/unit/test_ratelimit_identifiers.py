"""Identifier normalisation: bounded, safe, collision-free key parts (marker `ratelimit`)."""

from __future__ import annotations

import ipaddress

import pytest

from cache.identifiers import (
    HASH_PREFIX,
    MAX_PLAIN_LENGTH,
    IdentifierKind,
    InvalidIdentifier,
    hash_identifier,
    normalize,
    normalize_ip,
    normalize_opaque,
    normalize_secret,
)

pytestmark = pytest.mark.ratelimit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7\n", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::FFFF:CB00:7107", "203.0.113.7"),
        ("2001:db8:1:2::1", "2001:db8:1::/56"),
        ("2001:0DB8:0001:00ff:ffff:ffff:ffff:ffff", "2001:db8:1::/56"),
        ("[2001:db8:1:2::5]", "2001:db8:1::/56"),
        ("2001:db8:1:2::5%eth0", "2001:db8:1::/56"),
        ("2001:db8:1:103::1", "2001:db8:1:100::/56"),
        ("::1", "::/56"),
        ("fe80::1%25", "fe80::/56"),
        (ipaddress.ip_address("198.51.100.1"), "198.51.100.1"),
        (ipaddress.ip_address("2001:db8::1"), "2001:db8::/56"),
    ],
)
def test_ip_normalisation(raw: object, expected: str) -> None:
    assert normalize_ip(raw) == expected
    assert normalize(raw, IdentifierKind.IP) == expected


def test_ipv6_prefix_is_configurable() -> None:
    assert normalize_ip("2001:db8:1:2::1", ipv6_prefix=48) == "2001:db8:1::/48"
    assert normalize_ip("2001:db8:1:2::1", ipv6_prefix=128) == "2001:db8:1:2::1/128"
    with pytest.raises(InvalidIdentifier, match="ipv6_prefix must be an int between 16 and 128, got 0"):
        normalize_ip("::1", ipv6_prefix=0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "not an IP address: ''"),
        ("localhost", "not an IP address: 'localhost'"),
        ("203.0.113.7:8080", "not an IP address: '203.0.113.7:8080'"),
        ("203.0.113.7\n198.51.100.1", "not an IP address: '203.0.113.7\\n198.51.100.1'"),
        ("203.0.113.7%eth0", "not an IP address: '203.0.113.7%eth0'"),
        ("01.2.3.4", "not an IP address: '01.2.3.4'"),
        ("1" * 10_000, "not an IP address: 10000 characters is too long for one"),
        (None, "an IP address must be a string, got NoneType"),
        (3232235777, "an IP address must be a string, got int"),
    ],
)
def test_bad_ips(raw: object, message: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        normalize_ip(raw)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "raw",
    ["alice", "user-42", "alice@example.com", "a.b_c+d", "A" * MAX_PLAIN_LENGTH, "0"],
)
def test_plain_identifiers_stay_readable(raw: str) -> None:
    assert normalize_opaque(raw) == raw


def test_int_identifiers() -> None:
    assert normalize_opaque(42) == "42"
    assert normalize_opaque(-1) == "-1"


@pytest.mark.parametrize(
    "raw",
    [
        "A" * (MAX_PLAIN_LENGTH + 1),
        "x" * 1_000_000,
        "ünïcødé",
        "用户",
        "a\nb",
        "a b",
        "a:b",
        "}{",
        "user*",
        "\x00",
        "\ud800",
        "h:abc",
    ],
)
def test_everything_else_is_hashed_and_bounded(raw: str) -> None:
    key_part = normalize_opaque(raw)
    assert key_part.startswith(HASH_PREFIX)
    assert len(key_part) == len(HASH_PREFIX) + 32
    assert key_part == hash_identifier(raw)


def test_no_two_identifiers_share_a_key_part() -> None:
    values = [
        "x" * 1_000_000,
        "x" * 999_999 + "y",
        "a\nb",
        "a b",
        "a\r\nb",
        "é",
        "e\u0301",  # the same letter decomposed: a different string, a different client
        "Bob",
        "bob",
        "\ud800",
        "\ud801",
        hash_identifier("a b"),  # a client sending another's hash does not become them
    ]
    parts = [normalize_opaque(v) for v in values]
    assert len(set(parts)) == len(values)


def test_secrets_are_always_hashed() -> None:
    assert normalize_secret("sk_live_abc") == hash_identifier("sk_live_abc")
    assert "sk_live_abc" not in normalize("sk_live_abc", IdentifierKind.SECRET)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "an identifier must not be empty"),
        (None, "an identifier must be a string or an int, got NoneType"),
        (True, "an identifier must be a string or an int, got bool"),
        (b"bytes", "an identifier must be a string or an int, got bytes"),
        (1.5, "an identifier must be a string or an int, got float"),
    ],
)
@pytest.mark.parametrize("kind", [IdentifierKind.OPAQUE, IdentifierKind.SECRET])
def test_bad_identifiers(raw: object, message: str, kind: IdentifierKind) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        normalize(raw, kind)
    assert str(info.value) == message
