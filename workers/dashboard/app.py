"""rq-dashboard for operators, wrapped so hostile job data cannot act through it.

`python -m workers dashboard` refuses to listen on a non-loopback address unless
DASHBOARD_USERNAME and DASHBOARD_PASSWORD are set; when they are set, every request
(pages, JSON, static files) needs them. The adaptations of rq-dashboard 0.9 live one
concern per module:

- `dashboard_serializer`: no pickle can load in this process (JSON only);
- `dashboard_templates`: every value from job data is escaped on every page;
- `dashboard_guard`: Host allow-list, POST-only state changes with a same-origin
  check, CSP and the other security headers;
- `dashboard_views`: the job views that break on rq 3 or on undecodable fields;
- `dashboard_connection`: on a Redis Cluster, our cluster client instead of a URL.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, request

from cache.connections import REDIS_ERRORS
from cache.errors import ConfigError, RedisUnavailable
from cache.settings import Settings, get_settings
from workers.dashboard import connection as dashboard_connection
from workers.dashboard import guard as dashboard_guard
from workers.dashboard import templates as dashboard_templates
from workers.dashboard import views as dashboard_views
from workers.dashboard.serializer import install_json_only

log = logging.getLogger("kryonix.dashboard")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def dashboard_redis_url(settings: Settings) -> str:
    """The URL rq-dashboard connects with: REDIS_URL, or a `redis+sentinel://` URL. Pure.

    rq-dashboard reads `redis+sentinel://host:port,.../<master>/<db>` (redis-sentinel-url)
    and asks the Sentinels for the master on every new connection, as our workers do.

    Raises:
        ConfigError: an IPv6 Sentinel address, which that URL form cannot carry.
    """
    if settings.sentinel is None:
        return settings.redis_url
    if any(":" in host for host, _ in settings.sentinel.addresses):
        raise ConfigError(
            "REDIS_SENTINELS: rq-dashboard cannot reach Sentinels by IPv6 address "
            "(redis-sentinel-url splits host:port at the first ':'); use host names or IPv4"
        )
    hosts = ",".join(f"{host}:{port}" for host, port in settings.sentinel.addresses)
    db = urlsplit(settings.redis_url).path.strip("/") or "0"
    return f"redis+sentinel://{hosts}/{settings.sentinel.master_name}/{db}"


def create_app(settings: Settings | None = None) -> Flask:
    """The rq-dashboard Flask app for the PRIMARY Redis (through Sentinel or a Redis Cluster client).

    Makes JSON RQ's only serializer in this process (see `workers.dashboard.serializer`).

    Raises:
        ConfigError: a non-loopback bind without credentials, or only one of the two set.
    """
    import rq_dashboard.web as dashboard_web
    from rq_dashboard.cli import make_flask_app

    settings = settings or get_settings()
    username, password = settings.dashboard_username, settings.dashboard_password
    if bool(username) != bool(password):
        raise ConfigError("set both DASHBOARD_USERNAME and DASHBOARD_PASSWORD, or neither")
    if not username and not is_loopback(settings.dashboard_bind):
        raise ConfigError(
            f"refusing to serve the dashboard on {settings.dashboard_bind} without authentication: "
            "set DASHBOARD_USERNAME and DASHBOARD_PASSWORD, or DASHBOARD_BIND=127.0.0.1"
        )
    install_json_only()
    app: Flask = make_flask_app(None, None, None, "")
    dashboard_guard.install(
        app, dashboard_guard.allowed_hosts(settings.dashboard_bind, settings.dashboard_allowed_hosts)
    )
    dashboard_templates.install(app.jinja_env)
    dashboard_views.install(app)
    if username and password:
        app.before_request(_basic_auth(username, password))
    for error in (*REDIS_ERRORS, RedisUnavailable):
        app.register_error_handler(error, _redis_unavailable)
    if settings.cluster is not None:
        dashboard_connection.use_cluster_client(app, settings.cluster)
        return app
    app.config["RQ_DASHBOARD_REDIS_URL"] = dashboard_redis_url(settings)
    app.config["RQ_DASHBOARD_REDIS_PASSWORD"] = settings.redis_password
    if settings.sentinel is not None:
        app.config["RQ_DASHBOARD_REDIS_SENTINEL_PASSWORD"] = settings.sentinel.password
    dashboard_web.setup_rq_connection(app)
    return app


def _redis_unavailable(error: Exception) -> Response:
    """A 503 that says why, for every page and JSON view, instead of Flask's bare 500."""
    name = type(error).__name__
    log.warning("dashboard %s: the PRIMARY Redis did not answer: %s: %s", request.path, name, error)
    return Response(
        f"the PRIMARY Redis did not answer ({name}); this page works again once it does\n",
        503,
        {"Retry-After": "5", "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"},
    )


def _basic_auth(username: str, password: str) -> Any:
    expected = (username.encode(), password.encode())

    def check() -> Response | None:
        auth = request.authorization
        given = (
            ((auth.username or "").encode(), (auth.password or "").encode())
            if auth is not None
            else (b"", b"")
        )
        # Compare both in constant time; rq-dashboard's own check uses `!=`.
        ok = hmac.compare_digest(given[0], expected[0]) & hmac.compare_digest(given[1], expected[1])
        if ok:
            return None
        return Response("authentication required", 401, {"WWW-Authenticate": 'Basic realm="KRYONIX jobs"'})

    return check


def serve(settings: Settings | None = None) -> None:
    """Serve the dashboard with waitress until the process is stopped."""
    import waitress

    settings = settings or get_settings()
    app = create_app(settings)
    log.info("rq-dashboard on http://%s:%d/", settings.dashboard_bind, settings.dashboard_port)
    waitress.serve(app, host=settings.dashboard_bind, port=settings.dashboard_port, threads=4, _quiet=True)
