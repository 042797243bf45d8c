"""One typed settings object, built once from the environment.

Every variable is parsed here and nowhere else; a bad value raises `ConfigError`
naming the variable and what was expected, so a misconfigured process dies at
start-up instead of at the first job.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from cache.errors import ConfigError
from cache.limits import API, BY_IP, BY_USER, PRESET_VARIABLES, Preset, parse_preset

T = TypeVar("T")

# Defaults, one line of why each.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # the standard local Redis
DEFAULT_SENTINEL_MASTER = "mymaster"  # the name Redis' own sentinel.conf example uses
DEFAULT_SOCKET_TIMEOUT_S = 5.0  # long enough for a loaded server, short enough to fail a request
DEFAULT_CONNECT_TIMEOUT_S = 2.0  # a connect that takes longer than this is a dead host
DEFAULT_HEALTH_CHECK_INTERVAL_S = 30  # PING idle connections before reuse, so a restart is noticed
DEFAULT_RETRY_ATTEMPTS = 6  # ~3 s of exponential backoff: rides over a Redis restart
DEFAULT_CALL_TIMEOUT_S = 1.0  # a web request waits on Redis about a second, then fails or fails open
DEFAULT_IPV6_PREFIX = 56  # RIPE-690's residential assignment: one home is one /56 (see README)
DEFAULT_SESSION_MAX_BYTES = 64 * 1024  # encoded data of one session: a cart, not a file store
DEFAULT_DATABASE_URL = "sqlite:///var/kryonix.db"  # embedded default, no server needed
DEFAULT_SMTP_HOST = "127.0.0.1"
DEFAULT_SMTP_PORT = 1025  # the local SMTP catcher of `make run`
DEFAULT_SMTP_TIMEOUT_S = 10.0
DEFAULT_MAIL_FROM = "KRYONIX <no-reply@kryonix.local>"
DEFAULT_REPORTS_DIR = "var/reports"
DEFAULT_EVENTS_STREAM_MAXLEN = 1000  # per channel: enough to cover a reconnect, small enough for noeviction
DEFAULT_EVENTS_STREAM_TTL_S = 24 * 3600  # a channel nobody publishes to for a day frees its stream
DEFAULT_DASHBOARD_BIND = "127.0.0.1"  # never exposed beyond loopback unless asked
DEFAULT_DASHBOARD_PORT = 9181  # rq-dashboard's own default

REDIS_SCHEMES = ("redis", "rediss", "unix")
MAX_ADDRESS_LENGTH = 320  # RFC 5321: 64 octets of local part, @, 255 of domain
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# An ASCII addr-spec; single-label and special-use domains (kryonix.local) are allowed:
# this is operator configuration, and development runs on such domains.
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*")
# `address`, or `Name <address>` with a name that needs no parser's goodwill: plain words,
# or one quoted string. A comma, `;`, `@` or `<` outside quotes would make it a list or a route.
_MAILBOX = re.compile(
    r'(?:(?:[^<>"@,;:\\\s][^<>"@,;:\\]*|"[^"\\]*")?\s*<(?P<angle>[^<>\s]+)>|(?P<bare>[^<>\s]+))'
)
SECRET_FIELDS = frozenset({"redis_password", "smtp_password", "dashboard_password"})


@dataclass(frozen=True, kw_only=True)
class Sentinel:
    """Redis Sentinel discovery for the PRIMARY role."""

    addresses: tuple[tuple[str, int], ...]
    master_name: str = DEFAULT_SENTINEL_MASTER
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Process-wide configuration; see `.env.example` for every variable."""

    redis_url: str = DEFAULT_REDIS_URL
    cache_redis_url: str = DEFAULT_REDIS_URL
    redis_password: str | None = field(default=None, repr=False)
    sentinel: Sentinel | None = None
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    health_check_interval_s: int = DEFAULT_HEALTH_CHECK_INTERVAL_S
    retry_attempts: int = DEFAULT_RETRY_ATTEMPTS
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    database_url: str = DEFAULT_DATABASE_URL
    smtp_host: str = DEFAULT_SMTP_HOST
    smtp_port: int = DEFAULT_SMTP_PORT
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_tls: bool = False
    smtp_starttls: bool = False
    smtp_timeout_s: float = DEFAULT_SMTP_TIMEOUT_S
    mail_from: str = DEFAULT_MAIL_FROM
    ops_emails: tuple[str, ...] = ()
    reports_dir: Path = Path(DEFAULT_REPORTS_DIR)
    reports_base_url: str | None = None
    reports_notify_domains: tuple[str, ...] = ()  # empty: report emails may go to any domain
    ratelimit_by_ip: Preset = BY_IP
    ratelimit_by_user: Preset = BY_USER
    ratelimit_api: Preset = API
    ratelimit_ipv6_prefix: int = DEFAULT_IPV6_PREFIX
    session_max_bytes: int = DEFAULT_SESSION_MAX_BYTES
    events_stream_maxlen: int = DEFAULT_EVENTS_STREAM_MAXLEN
    events_stream_ttl_s: int = DEFAULT_EVENTS_STREAM_TTL_S
    log_format: str = "text"
    dashboard_bind: str = DEFAULT_DASHBOARD_BIND
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    dashboard_username: str | None = None
    dashboard_password: str | None = field(default=None, repr=False)
    dashboard_allowed_hosts: tuple[str, ...] = ()  # besides the bind address and loopback names
    worker_max_rss_mb: int | None = None
    allow_job_webhooks: bool = False

    def __repr__(self) -> str:
        """Every field, with passwords and credentials inside URLs replaced by `***`."""
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in SECRET_FIELDS:
                text = "None" if value is None else "'***'"
            elif isinstance(value, str):
                text = repr(redact_url(value))
            else:
                text = repr(value)
            shown.append(f"{item.name}={text}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default `os.environ`).

        Raises:
            ConfigError: a variable has a value of the wrong shape; the message names it.
        """
        env = _Env(os.environ if environ is None else environ)
        redis_url = env.url("REDIS_URL", DEFAULT_REDIS_URL)
        smtp_tls = env.boolean("SMTP_TLS", False)
        smtp_starttls = env.boolean("SMTP_STARTTLS", False)
        if smtp_tls and smtp_starttls:
            raise ConfigError("SMTP_TLS and SMTP_STARTTLS are exclusive: implicit TLS or STARTTLS, not both")
        log_format = env.get("LOG_FORMAT", "text")
        if log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
        return cls(
            redis_url=redis_url,
            cache_redis_url=env.url("CACHE_REDIS_URL", redis_url),
            redis_password=env.optional("REDIS_PASSWORD"),
            sentinel=env.sentinel(),
            socket_timeout_s=env.number("REDIS_SOCKET_TIMEOUT", DEFAULT_SOCKET_TIMEOUT_S, float),
            connect_timeout_s=env.number("REDIS_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S, float),
            health_check_interval_s=env.number(
                "REDIS_HEALTH_CHECK_INTERVAL", DEFAULT_HEALTH_CHECK_INTERVAL_S, int
            ),
            retry_attempts=env.number("REDIS_RETRY_ATTEMPTS", DEFAULT_RETRY_ATTEMPTS, int),
            call_timeout_s=env.number("REDIS_CALL_TIMEOUT", DEFAULT_CALL_TIMEOUT_S, float),
            database_url=env.database_url(),
            smtp_host=env.get("SMTP_HOST", DEFAULT_SMTP_HOST),
            smtp_port=env.port("SMTP_PORT", DEFAULT_SMTP_PORT),
            smtp_username=env.optional("SMTP_USERNAME"),
            smtp_password=env.optional("SMTP_PASSWORD"),
            smtp_tls=smtp_tls,
            smtp_starttls=smtp_starttls,
            smtp_timeout_s=env.number("SMTP_TIMEOUT", DEFAULT_SMTP_TIMEOUT_S, float),
            mail_from=env.mailbox("MAIL_FROM", DEFAULT_MAIL_FROM),
            ops_emails=env.addresses("OPS_EMAIL"),
            reports_dir=Path(env.get("REPORTS_DIR", DEFAULT_REPORTS_DIR)),
            reports_base_url=env.http_url("REPORTS_BASE_URL"),
            reports_notify_domains=env.domains("REPORTS_NOTIFY_DOMAINS"),
            ratelimit_by_ip=env.preset("RATELIMIT_BY_IP"),
            ratelimit_by_user=env.preset("RATELIMIT_BY_USER"),
            ratelimit_api=env.preset("RATELIMIT_API"),
            ratelimit_ipv6_prefix=env.bounded("RATELIMIT_IPV6_PREFIX", DEFAULT_IPV6_PREFIX, 16, 128),
            session_max_bytes=env.bounded(
                "SESSION_MAX_BYTES", DEFAULT_SESSION_MAX_BYTES, 1024, 64 * 1024 * 1024
            ),
            events_stream_maxlen=env.number("EVENTS_STREAM_MAXLEN", DEFAULT_EVENTS_STREAM_MAXLEN, int),
            events_stream_ttl_s=env.number("EVENTS_STREAM_TTL", DEFAULT_EVENTS_STREAM_TTL_S, int),
            log_format=log_format,
            dashboard_bind=env.get("DASHBOARD_BIND", DEFAULT_DASHBOARD_BIND),
            dashboard_port=env.port("DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT),
            dashboard_username=env.optional("DASHBOARD_USERNAME"),
            dashboard_password=env.optional("DASHBOARD_PASSWORD"),
            dashboard_allowed_hosts=_host_list(
                "DASHBOARD_ALLOWED_HOSTS", env.get("DASHBOARD_ALLOWED_HOSTS", "")
            ),
            worker_max_rss_mb=env.optional_int("WORKER_MAX_RSS_MB", example=512),
            allow_job_webhooks=env.boolean("ALLOW_JOB_WEBHOOKS", False),
        )


class _Env:
    """Typed reads of environment variables with errors that name the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

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

    def mailbox(self, name: str, default: str) -> str:
        """One `address` or `Name <address>`, checked now so a bad sender stops start-up."""
        value = self.get(name, default)
        _check_mailbox(name, value)
        return value

    def addresses(self, name: str) -> tuple[str, ...]:
        """A comma-separated list of mailboxes; an empty item is an error, not skipped."""
        raw = self._environ.get(name, "").strip()
        if not raw:
            return ()
        items = tuple(item.strip() for item in raw.split(","))
        for index, item in enumerate(items):
            _check_mailbox(f"{name} (item {index + 1})", item)
        return items

    def port(self, name: str, default: int) -> int:
        value = self.number(name, default, int)
        if not 0 < value < 65536:
            raise ConfigError(f"{name} must be a TCP port between 1 and 65535, got {value}")
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

    def url(self, name: str, default: str) -> str:
        value = self.get(name, default)
        try:
            parts = urlsplit(value)
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket: redis://[::1/0
            raise ConfigError(f"{name} is not a valid URL ({exc}): {_redact(value)!r}") from None
        if parts.scheme not in REDIS_SCHEMES:
            raise ConfigError(
                f"{name} must be a redis://, rediss:// or unix:// URL "
                f"(e.g. {DEFAULT_REDIS_URL}), got {_redact(value)!r}"
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"{name} has an invalid port: {_redact(value)!r}") from None
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigError(f"{name} has no host: {_redact(value)!r}")
        if parts.scheme == "unix" and not parts.path:
            raise ConfigError(f"{name} has no socket path: {_redact(value)!r}")
        del port
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        if db and not db.isdigit():
            raise ConfigError(f"{name} database must be a number (e.g. /0), got {_redact(value)!r}")
        _check_redis_options(name, value)
        return value

    def preset(self, name: str) -> Preset:
        base = PRESET_VARIABLES[name]
        raw = self._environ.get(name, "").strip()
        return parse_preset(name, raw, base) if raw else base

    def http_url(self, name: str) -> str | None:
        """An optional http(s) URL without query or fragment, returned without a trailing slash."""
        value = self._environ.get(name, "").strip()
        if not value:
            return None
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            raise ConfigError(f"{name} is not a valid URL ({exc}): {_redact(value)!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(
                f"{name} must be an http:// or https:// URL with a host and no query "
                f"(e.g. https://app.example.com/reports), got {_redact(value)!r}"
            )
        return value.rstrip("/")

    def database_url(self) -> str:
        value = self.get("DATABASE_URL", DEFAULT_DATABASE_URL)
        try:
            scheme = urlsplit(value).scheme
        except ValueError as exc:
            raise ConfigError(f"DATABASE_URL is not a valid URL ({exc}): {_redact(value)!r}") from None
        if not scheme or not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
            raise ConfigError(
                f"DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL, got {_redact(value)!r}"
            )
        return value

    def domains(self, name: str) -> tuple[str, ...]:
        """A comma-separated list of DNS domains, lowercased (`example.com,corp.example`)."""
        found = []
        for item in self._environ.get(name, "").split(","):
            domain = item.strip().lower().rstrip(".")
            if not domain:
                continue
            if not _DOMAIN.fullmatch(domain):
                raise ConfigError(
                    f"{name} must be a comma-separated list of domains (e.g. example.com), got item {item!r}"
                )
            found.append(domain)
        return tuple(dict.fromkeys(found))

    def sentinel(self) -> Sentinel | None:
        raw = self._environ.get("REDIS_SENTINELS", "").strip()
        if not raw:
            return None
        addresses = []
        for item in raw.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"REDIS_SENTINELS must be a comma-separated list of host:port, got item {item!r}"
                )
            addresses.append((host.strip("[]"), int(port)))
        return Sentinel(
            addresses=tuple(addresses),
            master_name=self.get("REDIS_SENTINEL_MASTER", DEFAULT_SENTINEL_MASTER),
            password=self.optional("REDIS_SENTINEL_PASSWORD"),
        )


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
        raise ConfigError(f"{name} cannot be used ({exc}): {_redact(value)!r}") from None


def _check_mailbox(name: str, value: str) -> None:
    match = _MAILBOX.fullmatch(value)
    address = match and (match["angle"] or match["bare"])
    if len(value) > 2 * MAX_ADDRESS_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(
            f"{name} must be one line of at most {2 * MAX_ADDRESS_LENGTH} characters, got {value!r}"
        )
    if not address or len(address) > MAX_ADDRESS_LENGTH or not _ADDRESS.fullmatch(address):
        raise ConfigError(
            f"{name} must be one 'address' or 'Name <address>' with an ASCII address "
            f"(e.g. {DEFAULT_MAIL_FROM}), got {value!r}"
        )


_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pass|token|secret)=)[^&#]*")


def _redact(url: str) -> str:
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


redact_url = _redact

_settings: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, parsed on first use (never at import time)."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def reset_settings() -> None:
    """Forget the parsed settings, so the next `get_settings()` reads the environment again."""
    global _settings
    _settings = None
