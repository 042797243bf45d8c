"""HTTP response headers for rate limit decisions; pure, no Redis.

Two families, both sent, because clients in the wild read either:

- the IETF draft (draft-ietf-httpapi-ratelimit-headers-08 and later), structured
  fields naming each policy: `RateLimit-Policy: "ip";q=100;w=60` and
  `RateLimit: "ip";r=42;t=60`;
- the de-facto `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.

Plus `Retry-After` (RFC 9110, delay in seconds) on a rejection. Times are rounded up
to whole seconds, so a client that waits what it is told is never early. Values are
built only from integers and scope names checked again here, so no header can carry
CR/LF even for a hand-made Decision.
"""

from __future__ import annotations

import math

from cache.limits import check_scope
from cache.ratelimit.core import Decision


def _ceil_s(value: float) -> int:
    return max(0, math.ceil(value))


def retry_after_value(decision: Decision) -> str | None:
    """The `Retry-After` value for a rejection (at least 1 s), None when admitted."""
    if decision.allowed:
        return None
    return str(max(1, _ceil_s(decision.retry_after_s)))


def policy_item(decision: Decision) -> str:
    """One `RateLimit-Policy` list member: `"<scope>";q=<limit>;w=<window s>`."""
    scope = check_scope(decision.scope)
    return f'"{scope}";q={decision.limit};w={max(1, _ceil_s(decision.window_s))}'


def limit_item(decision: Decision) -> str:
    """One `RateLimit` list member: `"<scope>";r=<remaining>;t=<seconds until full quota>`."""
    scope = check_scope(decision.scope)
    return f'"{scope}";r={decision.remaining};t={_ceil_s(decision.reset_after_s)}'


def _most_restrictive(decisions: tuple[Decision, ...]) -> Decision:
    denied = [d for d in decisions if not d.allowed]
    if denied:
        return max(denied, key=lambda d: d.retry_after_s)
    return min(decisions, key=lambda d: (d.remaining, -d.reset_after_s))


def rate_limit_headers(decision: Decision, *more: Decision, now_s: float | None = None) -> dict[str, str]:
    """Response headers for one request checked against one or several limits.

    Args:
        decision: a check's outcome; pass several when a request hit several limits
            (by IP and by user): the IETF fields list them all, the `X-RateLimit-*`
            trio and `Retry-After` describe the most restrictive.
        now_s: seconds since the epoch; when given, `X-RateLimit-Reset` is an epoch
            time (GitHub's convention) instead of a delay in seconds (the draft's).

    Returns:
        Header name to value. A degraded decision (Redis not consulted) has no
        remaining/reset values to report: only the policy, the limit and, on
        rejection, `Retry-After`.
    """
    decisions = (decision, *more)
    known = tuple(d for d in decisions if not d.degraded)
    headers = {"RateLimit-Policy": ", ".join(policy_item(d) for d in decisions)}
    if known:
        headers["RateLimit"] = ", ".join(limit_item(d) for d in known)
    worst = _most_restrictive(decisions)
    headers["X-RateLimit-Limit"] = str(worst.limit)
    if not worst.degraded:
        reset_s = worst.reset_after_s if now_s is None else now_s + worst.reset_after_s
        headers["X-RateLimit-Remaining"] = str(worst.remaining)
        headers["X-RateLimit-Reset"] = str(_ceil_s(reset_s))
    retry = retry_after_value(worst)
    if retry is not None:
        headers["Retry-After"] = retry
    return headers
