"""Typed reads of environment variables, with errors that name the variable.

The shapes the settings are made of (numbers, ports, booleans, Redis and database
URLs, mailboxes, domains, host lists, rate-limit presets), each checked once when the
settings are built, and `redact_url` so that no message or repr shows a credential.
`cache.settings` decides which variable is read with which shape.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

import idna

from cache.errors import ConfigError
from cache.limits import PRESET_VARIABLES, Preset, parse_preset

T = TypeVar("T")

REDIS_SCHEMES = ("redis", "rediss", "unix")
MAX_ADDRESS_LENGTH = 320  # RFC 5321: 64 octets of local part, @, 255 of domain
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# An ASCII addr-spec; single-label and special-use domains (kryonix.local) are allowed:
# this is operator configuration, and development runs on such domains.
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*")
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")  # at least two labels: relays refuse a bare name
# `address`, or `Name <address>` with a name that needs no parser's goodwill: plain words,
# or one quoted string. A comma, `;`, `@` or `<` outside quotes would make it a list or a route.
_MAILBOX = re.compile(
    r'(?:(?:[^<>"@,;:\\\s][^<>"@,;:\\]*|"[^"\\]*")?\s*<(?P<angle>[^<>\s]+)>|(?P<bare>[^<>\s]+))'
)


class Env:
    """Typed reads of environment variables with errors that name the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str:
        """The variable's value without surrounding blanks; empty when unset."""
        return self._environ.get(name, "").strip()

    def get(self, name: str, default: str) -> str:
        value = self._environ.get(name, "").strip()
        return value or default

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name, "")
        return value or None

    def number(self, name: str, default: T, kind: Callable[[str], T]) -> T:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ConfigError(f"{name} must be {expected} (e.g. {default}), got {raw!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number (e.g. {default}), got {raw!r}")
        if value <= 0:  # type: ignore[operator]
            raise ConfigError(f"{name} must be greater than 0, got {raw!r}")
        return value

    def optional_int(self, name: str, *, example: int) -> int | None:
        """A positive integer, or None when unset."""
        if not self._environ.get(name, "").strip():
            return None
        return self.number(name, example, int)

    def bounded(self, name: str, default: int, low: int, high: int) -> int:
        value = self.number(name, default, int)
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    def mailbox(self, name: str, default: str, *, example: str) -> str:
        """One `address` or `Name <address>`, checked now so a bad sender stops start-up."""
        value = self.get(name, default)
        _check_mailbox(name, value, example)
        return value

    def address(self, name: str, *, example: str) -> str | None:
        """One bare ASCII address (no display name), or None when unset."""
        value = self.optional(name)
        if value is not None and not (len(value) <= MAX_ADDRESS_LENGTH and _ADDRESS.fullmatch(value)):
            raise ConfigError(f"{name} must be one bare ASCII address (e.g. {example}), got {value!r}")
        return value

    def hostname(self, name: str) -> str | None:
        """A fully qualified host name (`mail.example.com`) or an RFC 5321 address literal.

        The literals are `[192.0.2.1]` and `[IPv6:2001:db8::1]`: a bare IP address is no
        host name, and `[::1]` lacks the tag RFC 5321 requires for IPv6.
        """
        value = self.optional(name)
        if value is None:
            return None
        if not (_address_literal(value) or _fully_qualified(value)):
            raise ConfigError(
                f"{name} must be a fully qualified host name (e.g. mail.example.com) or an address literal, "
                f"[192.0.2.1] for IPv4 or [IPv6:2001:db8::1] for IPv6, got {value!r}"
            )
        return value

    def addresses(self, name: str, *, example: str) -> tuple[str, ...]:
        """A comma-separated list of mailboxes; an empty item is an error, not skipped."""
        raw = self._environ.get(name, "").strip()
        if not raw:
            return ()
        items = tuple(item.strip() for item in raw.split(","))
        for index, item in enumerate(items):
            _check_mailbox(f"{name} (item {index + 1})", item, example)
        return items

    def port(self, name: str, default: int) -> int:
        value = self.number(name, default, int)
        if not 0 < value < 65536:
            raise ConfigError(f"{name} must be a TCP port between 1 and 65535, got {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of `choices`, exactly as written there; `default` when unset."""
        value = self.get(name, default)
        if value not in choices:
            raise ConfigError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be a boolean (true/false, 1/0, yes/no), got {raw!r}")

    def redis_url(self, name: str, default: str, *, example: str) -> str:
        """A redis://, rediss:// or unix:// URL that redis-py can use as it is."""
        value = self.get(name, default)
        try:
            parts = urlsplit(value)
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket: redis://[::1/0
            raise ConfigError(f"{name} is not a valid URL ({exc}): {redact_url(value)!r}") from None
        if parts.scheme not in REDIS_SCHEMES:
            raise ConfigError(
                f"{name} must be a redis://, rediss:// or unix:// URL "
                f"(e.g. {example}), got {redact_url(value)!r}"
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"{name} has an invalid port: {redact_url(value)!r}") from None
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigError(f"{name} has no host: {redact_url(value)!r}")
        if parts.scheme == "unix" and not parts.path:
            raise ConfigError(f"{name} has no socket path: {redact_url(value)!r}")
        del port
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        if db and not db.isdigit():
            raise ConfigError(f"{name} database must be a number (e.g. /0), got {redact_url(value)!r}")
        _check_redis_options(name, value)
        return value

    def host_ports(self, name: str) -> tuple[tuple[str, int], ...]:
        """A comma-separated list of `host:port` (IPv6 as `[::1]:7000`); empty when unset."""
        raw = self.raw(name)
        if not raw:
            return ()
        found = []
        for item in raw.split(","):
            host, sep, port = item.strip().rpartition(":")
            malformed = not sep or not host or any(c in host for c in "/@ ")
            if malformed or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{name} must be a comma-separated list of host:port, got item {item!r}")
            if ":" in host and not (host.startswith("[") and host.endswith("]")):
                raise ConfigError(f"{name}: an IPv6 address goes in brackets ([::1]:7000), got item {item!r}")
            found.append((host.strip("[]"), int(port)))
        return tuple(dict.fromkeys(found))

    def preset(self, name: str) -> Preset:
        base = PRESET_VARIABLES[name]
        raw = self._environ.get(name, "").strip()
        return parse_preset(name, raw, base) if raw else base

    def hosts(self, name: str) -> tuple[str, ...]:
        """Comma-separated host names or IP addresses (no port, no wildcard)."""
        return _host_list(name, self.get(name, ""))

    def http_url(self, name: str) -> str | None:
        """An optional http(s) URL without query or fragment, returned without a trailing slash."""
        value = self._environ.get(name, "").strip()
        if not value:
            return None
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            raise ConfigError(f"{name} is not a valid URL ({exc}): {redact_url(value)!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(
                f"{name} must be an http:// or https:// URL with a host and no query "
                f"(e.g. https://app.example.com/reports), got {redact_url(value)!r}"
            )
        return value.rstrip("/")

    def database_url(self, name: str, default: str) -> str:
        value = self.get(name, default)
        try:
            scheme = urlsplit(value).scheme
        except ValueError as exc:
            raise ConfigError(f"{name} is not a valid URL ({exc}): {redact_url(value)!r}") from None
        if not scheme or not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
            raise ConfigError(
                f"{name} must be a sqlite:/// or postgresql+psycopg:// URL, got {redact_url(value)!r}"
            )
        return value

    def domains(self, name: str) -> tuple[str, ...]:
        """A comma-separated list of DNS domains, lowercased, in ASCII (`example.com,bücher.example`).

        An internationalized name becomes its IDNA form (`xn--bcher-kva.example`), the form
        email-validator gives addresses' domains, so the two compare.
        """
        found = []
        for item in self._environ.get(name, "").split(","):
            domain = _ascii_domain(name, item.strip().lower().rstrip("."))
            if not domain:
                continue
            if not _DOMAIN.fullmatch(domain):
                raise ConfigError(
                    f"{name} must be a comma-separated list of domains (e.g. example.com), got item {item!r}"
                )
            found.append(domain)
        return tuple(dict.fromkeys(found))


def _address_literal(value: str) -> bool:
    """`[a.b.c.d]` or `[IPv6:<IPv6 address>]` (RFC 5321 4.1.3; no zone id). Pure."""
    if not (value.startswith("[") and value.endswith("]")) or "%" in value:
        return False
    inner = value[1:-1]
    is_v6 = inner[:5].lower() == "ipv6:"
    try:
        (ipaddress.IPv6Address if is_v6 else ipaddress.IPv4Address)(inner[5:] if is_v6 else inner)
    except ValueError:
        return False
    return True


def _fully_qualified(value: str) -> bool:
    """At least two labels, the last not all digits (`1.2.3.4` is an address, not a name). Pure."""
    return (
        len(value) <= 253
        and _HOSTNAME.fullmatch(value) is not None
        and not value.rpartition(".")[2].isdigit()
    )


def _ascii_domain(name: str, domain: str) -> str:
    """`domain` in its IDNA 2008 ASCII form (UTS 46 mapping, as email-validator); ASCII is kept as is."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ConfigError(
            f"{name} item {domain!r} is not a valid internationalized domain name: {exc}"
        ) from None


_DOMAIN = re.compile(r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?")


_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _host_list(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated host names or IP addresses (no port, no wildcard), lower-cased; IPv6 bracketed."""
    hosts = []
    for item in (part.strip().lower() for part in raw.split(",")):
        if not item:
            continue
        try:
            address = ipaddress.ip_address(item.strip("[]"))
        except ValueError:
            if not _HOST_NAME.fullmatch(item.rstrip(".")):
                raise ConfigError(
                    f"{name} must be comma-separated host names or IP addresses without port "
                    f"(e.g. jobs.example.com,10.0.0.5), got item {item!r}"
                ) from None
            hosts.append(item.rstrip("."))
            continue
        hosts.append(f"[{address}]" if address.version == 6 else str(address))
    return tuple(hosts)


def _check_redis_options(name: str, value: str) -> None:
    """Query options (`?socket_timeout=...`) as redis-py will read them: a bad one stops start-up."""
    from redis.connection import parse_url

    try:
        parse_url(value)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigError(f"{name} cannot be used ({exc}): {redact_url(value)!r}") from None


def _check_mailbox(name: str, value: str, example: str) -> None:
    match = _MAILBOX.fullmatch(value)
    address = match and (match["angle"] or match["bare"])
    if len(value) > 2 * MAX_ADDRESS_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(
            f"{name} must be one line of at most {2 * MAX_ADDRESS_LENGTH} characters, got {value!r}"
        )
    if not address or len(address) > MAX_ADDRESS_LENGTH or not _ADDRESS.fullmatch(address):
        raise ConfigError(
            f"{name} must be one 'address' or 'Name <address>' with an ASCII address "
            f"(e.g. {example}), got {value!r}"
        )


_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pass|token|secret)=)[^&#]*")


def redact_url(url: str) -> str:
    """`url` with its userinfo and any password query parameter replaced by `***`.

    Parsed by hand, not by urlsplit, so a URL too malformed to parse (an unclosed IPv6
    bracket) is redacted too. `redis://secret@host` carries a bare password, so a
    userinfo without `:` is hidden whole; with `:` the user name stays readable.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _QUERY_SECRET.sub(r"\1***", url)
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    return f"{scheme}://{netloc}" + _QUERY_SECRET.sub(r"\1***", tail)
