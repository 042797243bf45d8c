"""Request and response rules around rq-dashboard: Host, same-origin POST, headers.

rq-dashboard 0.9 serves any `Host` (so a DNS-rebinding page can read job JSON),
accepts cross-site form POSTs (a hostile page empties a queue), requeues every failed
job on `GET /requeue/<queue>` (an `<img>` does it), and sends no security headers.
Checked before anything else, in this order:

1. `Host` must name an allowed host (port ignored), else 400.
2. A route that changes state answers POST only: GET/HEAD/OPTIONS on it get 405.
3. A POST must come from the dashboard's own origin: `Origin`, or when a browser
   sends none, `Referer`, must name the request's host; neither, or another, is 403.

Every response (pages, JSON, static files, errors) carries a strict CSP with a
per-request nonce for the dashboard's one inline script, anti-framing headers,
`nosniff` and a same-origin Referrer-Policy.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from flask import Flask, Response, g, request

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

# underscore's templates compile with `new Function`, hence 'unsafe-eval' (never 'unsafe-inline'):
# the compiled text is the dashboard's own template markup, never job data (which is escaped).
# Inline `style=""` attributes of rq-dashboard's markup need 'unsafe-inline' for styles only.
CSP = (
    "default-src 'none'; script-src 'self' 'nonce-{nonce}' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # not no-referrer: that makes a same-origin POST send `Origin: null`
    "Cross-Origin-Opener-Policy": "same-origin",
}


def host_name(value: str) -> str:
    """The host of a `Host`/URL authority, lower-cased, port dropped, IPv6 in brackets. Pure."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else ""
    name, _, port = value.rpartition(":")
    if name and port.isdigit():
        value = name
    return value.rstrip(".")


def allowed_hosts(bind: str, extra: Iterable[str]) -> frozenset[str]:
    """The bind address, the loopback names and `extra`, in `host_name` form. Pure."""
    names = {*LOOPBACK_NAMES, *extra}
    try:
        names.add(f"[{bind}]" if ipaddress.ip_address(bind.strip("[]")).version == 6 else bind)
    except ValueError:
        names.add(bind)  # a host name
    return frozenset(host_name(name) if not name.startswith("[") else name.lower() for name in names)


def same_origin(origin: str | None, referer: str | None, host: str) -> bool:
    """Whether a state-changing request comes from a page of `host` itself. Pure.

    The scheme is not compared: behind a TLS proxy the page is https and the request
    reaching us is http. The host (already allow-listed) and port must match.
    """
    source = origin if origin is not None else referer
    if not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == host.lower()


def install(app: Flask, hosts: frozenset[str]) -> None:
    """Register the checks (first of every before_request) and the response headers."""
    app.before_request_funcs.setdefault(None, []).insert(0, _check(hosts))
    app.after_request(_headers)
    app.jinja_env.globals["csp_nonce"] = _nonce


def _nonce() -> str:
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(18)
    return str(g.csp_nonce)


def _check(hosts: frozenset[str]) -> Callable[[], Response | None]:
    def check() -> Response | None:
        if host_name(request.host) not in hosts:
            return _refuse(400, f"Host {request.host!r} is not allowed (DASHBOARD_ALLOWED_HOSTS)")
        rule = request.url_rule
        changes_state = rule is not None and "POST" in (rule.methods or ())
        if changes_state and request.method != "POST":
            return _refuse(405, "this route changes state: POST only", {"Allow": "POST"})
        if request.method not in SAFE_METHODS and not same_origin(
            request.headers.get("Origin"), request.headers.get("Referer"), request.host
        ):
            return _refuse(403, "cross-site request refused: Origin/Referer missing or not this dashboard")
        return None

    return check


def _refuse(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return Response(reason + "\n", status, headers, mimetype="text/plain")


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP.format(nonce=_nonce())
    response.headers.update(HEADERS)
    return response
