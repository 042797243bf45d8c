"""One typed settings object, built once from the environment.

Every variable is read here and nowhere else (with the typed readers of `cache.env`);
a bad value raises `ConfigError` naming the variable and what was expected, so a
misconfigured process dies at start-up instead of at the first job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypedDict

from cache.env import Env, redact_url
from cache.errors import ConfigError
from cache.limits import API, BY_IP, BY_USER, Preset
from cache.proxies import ForwardedHeader, TrustedProxies

# Defaults, one line of why each.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # the standard local Redis
DEFAULT_SENTINEL_MASTER = "mymaster"  # the name Redis' own sentinel.conf example uses
DEFAULT_SOCKET_TIMEOUT_S = 5.0  # long enough for a loaded server, short enough to fail a request
DEFAULT_CONNECT_TIMEOUT_S = 2.0  # a connect that takes longer than this is a dead host
DEFAULT_HEALTH_CHECK_INTERVAL_S = 30  # PING idle connections before reuse, so a restart is noticed
DEFAULT_RETRY_ATTEMPTS = 6  # ~3 s of exponential backoff: rides over a Redis restart
DEFAULT_CALL_TIMEOUT_S = 1.0  # a web request waits on Redis about a second, then fails or fails open
DEFAULT_IPV6_PREFIX = 56  # RIPE-690's residential assignment: one home is one /56 (see docs/ratelimit.md)
DEFAULT_TRUSTED_PROXIES = TrustedProxies()  # trust no proxy: the connecting peer is the client
DEFAULT_SESSION_MAX_BYTES = 64 * 1024  # encoded data of one session: a cart, not a file store
DEFAULT_DATABASE_URL = "sqlite:///var/kryonix.db"  # embedded default, no server needed
DEFAULT_SMTP_HOST = "127.0.0.1"
DEFAULT_SMTP_PORT = 1025  # the local SMTP catcher of `make run`
DEFAULT_SMTP_TIMEOUT_S = 10.0
DEFAULT_EMAIL_CONCURRENCY = 32  # email jobs in flight per worker process (docs/performance.md)
DEFAULT_SMTP_MAX_CONNECTIONS = 32  # open SMTP connections per worker process, busy or idle
DEFAULT_MAIL_FROM = "KRYONIX <no-reply@kryonix.local>"
DEFAULT_KRYONIX_ENV = "development"  # production must be said explicitly
ENVIRONMENTS = ("development", "staging", "production")
DEFAULT_REPORTS_DIR = "var/reports"
DEFAULT_EVENTS_STREAM_MAXLEN = 1000  # per channel: enough to cover a reconnect, small enough for noeviction
DEFAULT_EVENTS_STREAM_TTL_S = 24 * 3600  # a channel nobody publishes to for a day frees its stream
DEFAULT_DASHBOARD_BIND = "127.0.0.1"  # never exposed beyond loopback unless asked
DEFAULT_DASHBOARD_PORT = 9181  # rq-dashboard's own default

SECRET_FIELDS = frozenset({"redis_password", "smtp_password", "dashboard_password"})


@dataclass(frozen=True, kw_only=True)
class Sentinel:
    """Redis Sentinel discovery for the PRIMARY role."""

    addresses: tuple[tuple[str, int], ...]
    master_name: str = DEFAULT_SENTINEL_MASTER
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """A Redis Cluster for one role: the nodes a client discovers the whole cluster from.

    Password and timeouts are the role's usual settings; `tls` is `REDIS_CLUSTER_TLS`.
    """

    nodes: tuple[tuple[str, int], ...]
    tls: bool = False


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Process-wide configuration; see `.env.example` for every variable."""

    redis_url: str = DEFAULT_REDIS_URL
    cache_redis_url: str = DEFAULT_REDIS_URL
    redis_password: str | None = field(default=None, repr=False)
    sentinel: Sentinel | None = None
    cluster: Cluster | None = None  # REDIS_CLUSTER_NODES: the PRIMARY is a Redis Cluster
    cache_cluster: Cluster | None = None  # CACHE_REDIS_CLUSTER_NODES: the CACHE is its own cluster
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
    smtp_max_connections: int = DEFAULT_SMTP_MAX_CONNECTIONS
    smtp_helo_name: str | None = None  # SMTP_HELO_NAME; None: socket.getfqdn(), resolved when sending
    email_concurrency: int = DEFAULT_EMAIL_CONCURRENCY
    mail_from: str = DEFAULT_MAIL_FROM
    mail_return_path: str | None = None  # MAIL_RETURN_PATH, the envelope sender; None: MAIL_FROM's address
    mail_allow_test_domains: bool = False  # recipients at .test, .example, .local...; never in production
    environment: str = DEFAULT_KRYONIX_ENV  # KRYONIX_ENV
    ops_emails: tuple[str, ...] = ()
    reports_dir: Path = Path(DEFAULT_REPORTS_DIR)
    reports_base_url: str | None = None
    reports_notify_domains: tuple[str, ...] = ()  # empty: report emails may go to any domain
    ratelimit_by_ip: Preset = BY_IP
    ratelimit_by_user: Preset = BY_USER
    ratelimit_api: Preset = API
    ratelimit_ipv6_prefix: int = DEFAULT_IPV6_PREFIX
    trusted_proxies: TrustedProxies = DEFAULT_TRUSTED_PROXIES
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
        env = Env(os.environ if environ is None else environ)
        redis_url = env.redis_url("REDIS_URL", DEFAULT_REDIS_URL, example=DEFAULT_REDIS_URL)
        smtp_tls = env.boolean("SMTP_TLS", False)
        smtp_starttls = env.boolean("SMTP_STARTTLS", False)
        if smtp_tls and smtp_starttls:
            raise ConfigError("SMTP_TLS and SMTP_STARTTLS are exclusive: implicit TLS or STARTTLS, not both")
        log_format = env.choice("LOG_FORMAT", "text", ("text", "json"))
        return cls(
            redis_url=redis_url,
            cache_redis_url=env.redis_url("CACHE_REDIS_URL", redis_url, example=DEFAULT_REDIS_URL),
            redis_password=env.optional("REDIS_PASSWORD"),
            **_topology(env),
            socket_timeout_s=env.number("REDIS_SOCKET_TIMEOUT", DEFAULT_SOCKET_TIMEOUT_S, float),
            connect_timeout_s=env.number("REDIS_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S, float),
            health_check_interval_s=env.number(
                "REDIS_HEALTH_CHECK_INTERVAL", DEFAULT_HEALTH_CHECK_INTERVAL_S, int
            ),
            retry_attempts=env.number("REDIS_RETRY_ATTEMPTS", DEFAULT_RETRY_ATTEMPTS, int),
            call_timeout_s=env.number("REDIS_CALL_TIMEOUT", DEFAULT_CALL_TIMEOUT_S, float),
            database_url=env.database_url("DATABASE_URL", DEFAULT_DATABASE_URL),
            smtp_host=env.get("SMTP_HOST", DEFAULT_SMTP_HOST),
            smtp_port=env.port("SMTP_PORT", DEFAULT_SMTP_PORT),
            smtp_username=env.optional("SMTP_USERNAME"),
            smtp_password=env.optional("SMTP_PASSWORD"),
            smtp_tls=smtp_tls,
            smtp_starttls=smtp_starttls,
            smtp_timeout_s=env.number("SMTP_TIMEOUT", DEFAULT_SMTP_TIMEOUT_S, float),
            smtp_max_connections=env.bounded("SMTP_MAX_CONNECTIONS", DEFAULT_SMTP_MAX_CONNECTIONS, 1, 1000),
            email_concurrency=env.bounded("EMAIL_CONCURRENCY", DEFAULT_EMAIL_CONCURRENCY, 1, 1000),
            mail_from=env.mailbox("MAIL_FROM", DEFAULT_MAIL_FROM, example=DEFAULT_MAIL_FROM),
            **_envelope(env),
            ops_emails=env.addresses("OPS_EMAIL", example=DEFAULT_MAIL_FROM),
            reports_dir=Path(env.get("REPORTS_DIR", DEFAULT_REPORTS_DIR)),
            reports_base_url=env.http_url("REPORTS_BASE_URL"),
            reports_notify_domains=env.domains("REPORTS_NOTIFY_DOMAINS"),
            ratelimit_by_ip=env.preset("RATELIMIT_BY_IP"),
            ratelimit_by_user=env.preset("RATELIMIT_BY_USER"),
            ratelimit_api=env.preset("RATELIMIT_API"),
            ratelimit_ipv6_prefix=env.bounded("RATELIMIT_IPV6_PREFIX", DEFAULT_IPV6_PREFIX, 16, 128),
            trusted_proxies=_trusted_proxies(env),
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
            dashboard_allowed_hosts=env.hosts("DASHBOARD_ALLOWED_HOSTS"),
            worker_max_rss_mb=env.optional_int("WORKER_MAX_RSS_MB", example=512),
            allow_job_webhooks=env.boolean("ALLOW_JOB_WEBHOOKS", False),
        )


class _Envelope(TypedDict):
    smtp_helo_name: str | None
    mail_return_path: str | None
    mail_allow_test_domains: bool
    environment: str


def _envelope(env: Env) -> _Envelope:
    """EHLO name, envelope sender, test domains, and KRYONIX_ENV, which may refuse the last."""
    environment = env.choice("KRYONIX_ENV", DEFAULT_KRYONIX_ENV, ENVIRONMENTS)
    allow_test_domains = env.boolean("MAIL_ALLOW_TEST_DOMAINS", False)
    if allow_test_domains and environment == "production":
        raise ConfigError(
            "MAIL_ALLOW_TEST_DOMAINS=true is refused when KRYONIX_ENV=production: "
            "reserved test domains (.test, .example, .local...) receive no real mail"
        )
    return _Envelope(
        smtp_helo_name=env.hostname("SMTP_HELO_NAME"),
        mail_return_path=env.address("MAIL_RETURN_PATH", example="bounces@example.com"),
        mail_allow_test_domains=allow_test_domains,
        environment=environment,
    )


def _sentinel(env: Env) -> Sentinel | None:
    """`REDIS_SENTINELS` (`host:port,...`) and its master and password; None when unset."""
    addresses = env.host_ports("REDIS_SENTINELS")
    if not addresses:
        return None
    return Sentinel(
        addresses=addresses,
        master_name=env.get("REDIS_SENTINEL_MASTER", DEFAULT_SENTINEL_MASTER),
        password=env.optional("REDIS_SENTINEL_PASSWORD"),
    )


class _Topology(TypedDict):
    sentinel: Sentinel | None
    cluster: Cluster | None
    cache_cluster: Cluster | None


def _topology(env: Env) -> _Topology:
    """Sentinel for the primary, the primary's cluster, the cache's own cluster (each or None)."""
    sentinel = _sentinel(env)
    tls = env.boolean("REDIS_CLUSTER_TLS", False)
    cluster = _cluster(env, "REDIS_CLUSTER_NODES", tls=tls)
    if cluster is not None and sentinel is not None:
        raise ConfigError(
            "REDIS_CLUSTER_NODES and REDIS_SENTINELS are exclusive: the PRIMARY Redis is "
            "a cluster or is found through Sentinel, not both"
        )
    cache_cluster = _cluster(env, "CACHE_REDIS_CLUSTER_NODES", tls=tls)
    return _Topology(sentinel=sentinel, cluster=cluster, cache_cluster=cache_cluster)


def _cluster(env: Env, name: str, *, tls: bool) -> Cluster | None:
    """A cluster's startup nodes from `name` (`host:port,...`); None when unset."""
    nodes = env.host_ports(name)
    return Cluster(nodes=nodes, tls=tls) if nodes else None


def _trusted_proxies(env: Env) -> TrustedProxies:
    """`TRUSTED_PROXIES`, applied to the header `TRUSTED_PROXY_HEADER` names."""
    header = env.choice("TRUSTED_PROXY_HEADER", "x-forwarded-for", tuple(h.value for h in ForwardedHeader))
    return TrustedProxies.parse(env.raw("TRUSTED_PROXIES"), header=header)


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
