"""Hostile inputs at the edges of settings, rate-limit identifiers and session data (marker `security`).

Table-driven: each row is one input an attacker (or a careless operator) could send;
every one must be refused with an error naming what is wrong, or mapped to the key a
demanding operator expects. `HOSTILE_INPUTS` counts the rows, for the README.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Any

import pytest

from cache.env import redact_url
from cache.errors import ConfigError
from cache.identifiers import (
    IdentifierKind,
    InvalidIdentifier,
    embedded_ipv4,
    normalize,
    normalize_ip,
    normalize_opaque,
)
from cache.limits import InvalidRateLimit, check_scope
from cache.realtime.envelope import InvalidEvent, parse_stream_id, validate_event_name, validate_user_id
from cache.sessions.core import InvalidSessionArgument, encode_data, is_well_formed_id, new_session_id
from cache.settings import Settings

pytestmark = pytest.mark.security

# --- rate-limit identifiers: transition addresses and the IPv6 grouping ----------------

EMBEDDED_IPV4 = [
    ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4-mapped
    ("64:ff9b::203.0.113.7", "203.0.113.7"),  # NAT64, dotted tail
    ("64:ff9b::cb00:7108", "203.0.113.8"),  # NAT64, hex tail
    ("[64:ff9b::c633:6401]", "198.51.100.1"),  # NAT64 from a proxy header
    ("2002:cb00:7107::1", "203.0.113.7"),  # 6to4
    ("2002:cb00:7107:ffff:ffff:ffff:ffff:ffff", "203.0.113.7"),  # 6to4, last of its 65,536 /64s
    ("2002:c633:6401:1234::5%eth0", "198.51.100.1"),  # 6to4 with a zone
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),  # Teredo: the client's NAT address
]


@pytest.mark.parametrize(("raw", "expected"), EMBEDDED_IPV4)
def test_transition_addresses_are_keyed_by_their_ipv4(raw: str, expected: str) -> None:
    assert normalize_ip(raw) == expected
    assert normalize(raw, IdentifierKind.IP, ipv6_prefix=64) == expected


def test_nat64_clients_no_longer_share_one_limit() -> None:
    clients = {normalize_ip(f"64:ff9b::198.51.100.{i}") for i in range(1, 101)}
    assert len(clients) == 100


def test_one_6to4_owner_gets_one_limit_not_65536() -> None:
    subnets = {normalize_ip(f"2002:cb00:7107:{i:x}::1") for i in range(0, 65536, 97)}
    assert subnets == {"203.0.113.7"}


def test_a_56_holder_gets_one_limit_and_a_48_holder_256_by_default() -> None:
    assert len({normalize_ip(f"2001:db8:1:{i:x}::1") for i in range(256)}) == 1
    assert len({normalize_ip(f"2001:db8:1:{i:x}::1") for i in range(65536)}) == 256
    assert len({normalize_ip(f"2001:db8:1:{i:x}::1", ipv6_prefix=48) for i in range(65536)}) == 1


def test_native_ipv6_is_not_mistaken_for_a_transition_address() -> None:
    for raw in ("2001:db8::1", "2a00:1450::1", "fe80::1", "64:ff9c::1", "2003::1"):
        assert embedded_ipv4(ipaddress.IPv6Address(raw)) is None


@pytest.mark.parametrize("prefix", [0, 8, 15, 129, -56, True, 56.0, "56"])
def test_bad_ipv6_prefixes_are_refused(prefix: Any) -> None:
    with pytest.raises(InvalidIdentifier, match="ipv6_prefix must be an int between 16 and 128"):
        normalize_ip("2001:db8::1", ipv6_prefix=prefix)


# --- settings: addresses, URLs, secrets -------------------------------------------------

BAD_SETTINGS = [
    ({"MAIL_FROM": "not-an-address"}, "MAIL_FROM"),
    ({"MAIL_FROM": "KRYONIX <no-reply@kryonix.local"}, "MAIL_FROM"),
    ({"MAIL_FROM": "KRYONIX <no-reply@kryonix.local> trailing"}, "MAIL_FROM"),
    ({"MAIL_FROM": "a@example.com, b@example.com"}, "MAIL_FROM"),
    ({"MAIL_FROM": "Acme, Inc <a@example.com>"}, "MAIL_FROM"),
    ({"MAIL_FROM": "x <a@example.com> <b@example.com>"}, "MAIL_FROM"),
    ({"MAIL_FROM": "KRYONIX <no-reply@kryonix.local>\r\nBcc: victim@example.com"}, "MAIL_FROM"),
    ({"MAIL_FROM": "no-reply@kryonix.local\x00"}, "MAIL_FROM"),
    ({"MAIL_FROM": "a@@example.com"}, "MAIL_FROM"),
    ({"MAIL_FROM": ".a@example.com"}, "MAIL_FROM"),
    ({"MAIL_FROM": "a..b@example.com"}, "MAIL_FROM"),
    ({"MAIL_FROM": "a@-example.com"}, "MAIL_FROM"),
    ({"MAIL_FROM": "ré@example.com"}, "MAIL_FROM"),
    ({"MAIL_FROM": "a" * 400 + "@example.com"}, "MAIL_FROM"),
    ({"OPS_EMAIL": "ops"}, "OPS_EMAIL"),
    ({"OPS_EMAIL": "ops@example.com,,oncall@example.com"}, "OPS_EMAIL (item 2)"),
    ({"OPS_EMAIL": "ops@example.com, oncall"}, "OPS_EMAIL (item 2)"),
    ({"OPS_EMAIL": "ops@example.com\nBcc: x@example.com"}, "OPS_EMAIL"),
    ({"OPS_EMAIL": "ops@example.com;oncall@example.com"}, "OPS_EMAIL"),
    ({"REDIS_URL": "redis://[::1/0"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://[::1"}, "REDIS_URL"),
    ({"REDIS_URL": "rediss://[zz::1]/0"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://::1/0"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://h:99999/0"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://h:6379/0?socket_timeout=soon"}, "REDIS_URL"),
    ({"CACHE_REDIS_URL": "redis://h:6379/0?health_check_interval=x"}, "CACHE_REDIS_URL"),
    ({"CACHE_REDIS_URL": "redis://[::1/0"}, "CACHE_REDIS_URL"),
    ({"DATABASE_URL": "postgresql+psycopg://u:p@[::1/db"}, "DATABASE_URL"),
    ({"REPORTS_BASE_URL": "https://[::1/reports"}, "REPORTS_BASE_URL"),
    ({"REDIS_CALL_TIMEOUT": "0"}, "REDIS_CALL_TIMEOUT"),
    ({"REDIS_CALL_TIMEOUT": "-1"}, "REDIS_CALL_TIMEOUT"),
    ({"REDIS_CALL_TIMEOUT": "nan"}, "REDIS_CALL_TIMEOUT"),
    ({"REDIS_CALL_TIMEOUT": "inf"}, "REDIS_CALL_TIMEOUT"),
    ({"REDIS_CALL_TIMEOUT": "1s"}, "REDIS_CALL_TIMEOUT"),
    ({"REDIS_SOCKET_TIMEOUT": "nan"}, "REDIS_SOCKET_TIMEOUT"),
    ({"RATELIMIT_IPV6_PREFIX": "8"}, "RATELIMIT_IPV6_PREFIX"),
    ({"RATELIMIT_IPV6_PREFIX": "129"}, "RATELIMIT_IPV6_PREFIX"),
    ({"RATELIMIT_IPV6_PREFIX": "/56"}, "RATELIMIT_IPV6_PREFIX"),
    ({"SESSION_MAX_BYTES": "0"}, "SESSION_MAX_BYTES"),
    ({"SESSION_MAX_BYTES": "100"}, "SESSION_MAX_BYTES"),
    ({"SESSION_MAX_BYTES": "64KiB"}, "SESSION_MAX_BYTES"),
]


@pytest.mark.parametrize(("env", "named"), BAD_SETTINGS)
def test_bad_settings_are_a_config_error_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert named in str(info.value)
    assert "\n" not in str(info.value)  # one line in the log, even for a value carrying CR/LF


@pytest.mark.parametrize(
    "mail_from",
    [
        "KRYONIX <no-reply@kryonix.local>",
        "no-reply@example.com",
        "<no-reply@example.com>",
        '"Acme, Inc" <no-reply@example.com>',
        "Équipe KRYONIX <no-reply@example.com>",
    ],
)
def test_good_senders_are_kept_unchanged(mail_from: str) -> None:
    assert Settings.from_env({"MAIL_FROM": mail_from}).mail_from == mail_from


def test_ops_email_is_a_list_of_mailboxes() -> None:
    settings = Settings.from_env({"OPS_EMAIL": " ops@example.com , Oncall <oncall@example.com>"})
    assert settings.ops_emails == ("ops@example.com", "Oncall <oncall@example.com>")


def test_new_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.call_timeout_s, settings.ratelimit_ipv6_prefix, settings.session_max_bytes) == (
        1.0,
        56,
        65536,
    )


SECRETS = {
    "DATABASE_URL": "postgresql+psycopg://app:pg-secret-1@db.example.com/kryonix",
    "REDIS_URL": "redis://redis-secret-2@10.0.0.5:6379/0",
    "CACHE_REDIS_URL": "rediss://default:redis-secret-3@cache.example.com:6380/1",
    "REDIS_PASSWORD": "redis-secret-4",
    "REDIS_SENTINELS": "10.0.0.1:26379",
    "REDIS_SENTINEL_PASSWORD": "sentinel-secret-5",
    "SMTP_PASSWORD": "smtp-secret-6",
    "DASHBOARD_USERNAME": "ops",
    "DASHBOARD_PASSWORD": "dashboard-secret-7",
    "REPORTS_BASE_URL": "https://files:reports-secret-8@files.example.com/reports",
}


def test_repr_of_settings_shows_no_secret() -> None:
    shown = repr(Settings.from_env(SECRETS))
    for secret in ("pg-secret-1", "redis-secret-2", "redis-secret-3", "redis-secret-4", "sentinel-secret-5"):
        assert secret not in shown
    for secret in ("smtp-secret-6", "dashboard-secret-7", "reports-secret-8"):
        assert secret not in shown
    assert "postgresql+psycopg://app:***@db.example.com/kryonix" in shown  # still useful to read
    assert "redis://***@10.0.0.5:6379/0" in shown


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://secret@host:6379/0", "redis://***@host:6379/0"),
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:secret@host/0", "redis://user:***@host/0"),
        ("redis://user:p@ss@word@host/0", "redis://user:***@host/0"),
        ("rediss://secret@[::1]:6380/0", "rediss://***@[::1]:6380/0"),
        ("redis://secret@[::1/0", "redis://***@[::1/0"),  # too malformed to parse, redacted all the same
        ("redis://host:6379/0?password=secret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=secret", "unix:///run/redis.sock?password=***"),
        ("postgresql+psycopg://app:secret@db/kryonix", "postgresql+psycopg://app:***@db/kryonix"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:///var/kryonix.db", "sqlite:///var/kryonix.db"),
    ],
)
def test_redact_url_hides_every_credential(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert "secret" not in redact_url(url)


def test_error_for_a_malformed_url_does_not_leak_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "redis://user:hunter2@[::1/0"})
    assert "hunter2" not in str(info.value)


# --- session data: NaN, infinities and size ---------------------------------------------

NON_FINITE: list[Mapping[str, Any]] = [
    {"x": math.nan},
    {"x": math.inf},
    {"x": -math.inf},
    {"x": [1, 2, math.nan]},
    {"x": {"deep": {"deeper": [math.inf]}}},
    {"ok": None, "x": (0.5, -math.inf)},
]


@pytest.mark.parametrize("data", NON_FINITE)
def test_nan_and_infinities_are_refused_not_stored_as_null(data: Mapping[str, Any]) -> None:
    with pytest.raises(InvalidSessionArgument, match="NaN or an infinity"):
        encode_data(data)


def test_null_itself_is_still_fine() -> None:
    assert encode_data({"x": None, "y": [None, 1.5]}) == ["d:x", b"null", "d:y", b"[null,1.5]"]


@pytest.mark.parametrize(
    "data",
    [
        {"blob": "x" * (64 * 1024)},
        {f"k{i}": "x" * 1000 for i in range(70)},
        {"k" * 200: "x" * (64 * 1024 - 200)},
        {"é": "é" * (33 * 1024)},  # counted in encoded bytes, not characters
    ],
)
def test_session_data_over_the_cap_is_refused(data: Mapping[str, Any]) -> None:
    with pytest.raises(InvalidSessionArgument, match="over 65536 bytes encoded \\(SESSION_MAX_BYTES\\)"):
        encode_data(data)


def test_session_data_at_the_cap_is_accepted() -> None:
    value = "x" * (64 * 1024 - len("d:k") - 2)  # + the two quotes of the JSON string
    assert (
        len(b"".join(p if isinstance(p, bytes) else p.encode() for p in encode_data({"k": value}))) == 65536
    )
    with pytest.raises(InvalidSessionArgument):
        encode_data({"k": value}, max_bytes=65535)


# --- validators refuse a trailing newline (a `$` would accept it) -----------------------

TRAILING_NEWLINE = [
    ("rate-limit scope", lambda: check_scope("login\n"), InvalidRateLimit),
    ("realtime user id", lambda: validate_user_id("u1\n"), InvalidEvent),
    ("realtime event name", lambda: validate_event_name("order.shipped\n"), InvalidEvent),
    ("realtime stream id", lambda: parse_stream_id("1-0\n"), InvalidEvent),
]


@pytest.mark.parametrize(
    ("what", "call", "error"), TRAILING_NEWLINE, ids=[row[0] for row in TRAILING_NEWLINE]
)
def test_a_trailing_newline_is_refused(what: str, call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


def test_a_trailing_newline_is_neither_a_session_id_nor_a_plain_identifier() -> None:
    assert not is_well_formed_id(new_session_id() + "\n")
    assert normalize_opaque("bob\n") != "bob\n"
    assert normalize_opaque("bob\n").startswith("h:")


HOSTILE_INPUTS = (  # distinct cases, not the addresses generated inside one case
    len(EMBEDDED_IPV4)
    + 3  # a NAT64 crowd, a 6to4 owner's 65,536 /64s, a /48 holder's 65,536 /64s
    + 5  # native addresses that are not transition addresses
    + 8  # bad prefixes
    + len(BAD_SETTINGS)
    + len(SECRETS)
    + 9  # URLs with credentials to redact
    + 1  # malformed URL with a password
    + len(NON_FINITE)
    + 4  # oversized session data
    + len(TRAILING_NEWLINE)
    + 2  # trailing newline on a session id and an identifier
)
