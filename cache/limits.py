"""Rate-limit policies as values: the presets, their checks, their environment overrides.

Pure and free of any service, so that the settings can hold `Preset`s (built and
checked when the process starts) without importing the limiter; `cache.ratelimit`
applies them. `RATELIMIT_BY_IP`, `RATELIMIT_BY_USER` and `RATELIMIT_API` take
`LIMIT/WINDOW_SECONDS`, optionally `:open` or `:closed` for the failure policy, e.g.
`300/60` or `5000/3600:open`. A preset kept approximate for memory (user, API) keeps its
resolution at the same fraction of the new window, so its memory bound per key does not
change.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from cache.errors import ConfigError, KryonixError
from cache.identifiers import IdentifierKind

MAX_LIMIT = 100_000  # an exact log keeps a member per admission: ~13 MB for a full key this size
MAX_WINDOW_S = 366 * 86_400  # a longer window is a bug, and keeps times far from float limits

SCOPE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class FailurePolicy(StrEnum):
    OPEN = "open"  # Redis down: admit, log, count
    CLOSED = "closed"  # Redis down: deny with a reason and a Retry-After


class RateLimitError(KryonixError):
    """Base of the limiter's errors; raised itself when Redis rejects a check but is not down."""


class InvalidRateLimit(RateLimitError, ValueError):
    """A limit, window, cost, scope or time the limiter will not use; the message names it."""


def check_scope(scope: object) -> str:
    """Raises InvalidRateLimit unless `scope` is 1-32 of `a-z0-9_-`, starting with a letter."""
    if not isinstance(scope, str) or not SCOPE.fullmatch(scope):
        raise InvalidRateLimit(
            f"scope must be 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter, got {scope!r}"
        )
    return scope


def check_limit(limit: object) -> int:
    """Raises InvalidRateLimit unless `limit` is an int in 1..MAX_LIMIT."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidRateLimit(f"limit must be an int, got {limit!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRateLimit(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def window_to_ms(window_s: object) -> int:
    """A window in seconds, checked, as whole milliseconds (at least 1).

    Raises:
        InvalidRateLimit: not a finite number in (0, MAX_WINDOW_S].
    """
    if isinstance(window_s, bool) or not isinstance(window_s, int | float):
        raise InvalidRateLimit(f"window_s must be a number of seconds, got {window_s!r}")
    if not math.isfinite(window_s) or not 0 < window_s <= MAX_WINDOW_S:
        raise InvalidRateLimit(f"window_s must be > 0 and <= {MAX_WINDOW_S}, got {window_s!r}")
    return max(1, round(window_s * 1000))


def resolution_to_ms(resolution_s: object, window_ms: int) -> int:
    """A log resolution in seconds (None: exact), checked, as whole milliseconds.

    Raises:
        InvalidRateLimit: not None or a finite number in (0, window].
    """
    if resolution_s is None:
        return 1
    if isinstance(resolution_s, bool) or not isinstance(resolution_s, int | float):
        raise InvalidRateLimit(f"resolution_s must be a number of seconds or None, got {resolution_s!r}")
    message = f"resolution_s must be > 0 and <= the window ({window_ms / 1000:g} s), got {resolution_s!r}"
    if not math.isfinite(resolution_s) or resolution_s <= 0:
        raise InvalidRateLimit(message)
    # Compare whole milliseconds: 16.19 * 1000 is 16190.000000000002 in floating point.
    resolution_ms = max(1, round(resolution_s * 1000))
    if resolution_ms > window_ms:
        raise InvalidRateLimit(message)
    return resolution_ms


def check_failure_policy(policy: object) -> FailurePolicy:
    """Raises InvalidRateLimit unless `policy` is a FailurePolicy or its value ('open', 'closed')."""
    try:
        return FailurePolicy(policy)  # type: ignore[arg-type]  # any value: the enum rejects the bad ones
    except ValueError:
        raise InvalidRateLimit(f"failure_policy must be 'open' or 'closed', got {policy!r}") from None


def check_identifier_kind(kind: object) -> IdentifierKind:
    """Raises InvalidRateLimit unless `kind` is an IdentifierKind or its value ('ip', 'opaque', 'secret')."""
    try:
        return IdentifierKind(kind)  # type: ignore[arg-type]  # any value: the enum rejects the bad ones
    except ValueError:
        raise InvalidRateLimit(f"identifier_kind must be 'ip', 'opaque' or 'secret', got {kind!r}") from None


class Spec(NamedTuple):
    """A checked policy in the units the script takes (what `Preset` and `check` hand the shell)."""

    scope: str
    failure_policy: FailurePolicy
    identifier_kind: IdentifierKind
    limit: int
    window_ms: int
    resolution_ms: int


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named policy: who is limited (scope, identifier kind), how much, how precisely,
    and what happens when Redis is down. Checked when built, so a bad configuration
    fails at start-up.

    `resolution_s=None` keeps the log exact; a number lets admissions less than that
    apart share one log member (see docs/ratelimit.md, key layout and memory).
    """

    scope: str
    limit: int
    window_s: float
    resolution_s: float | None = None
    failure_policy: FailurePolicy = FailurePolicy.OPEN
    identifier_kind: IdentifierKind = IdentifierKind.OPAQUE
    spec: Spec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        window_ms = window_to_ms(self.window_s)
        spec = Spec(
            scope=check_scope(self.scope),
            # Accept the plain strings a config file holds ("closed", "ip").
            failure_policy=check_failure_policy(self.failure_policy),
            identifier_kind=check_identifier_kind(self.identifier_kind),
            limit=check_limit(self.limit),
            window_ms=window_ms,
            resolution_ms=resolution_to_ms(self.resolution_s, window_ms),
        )
        object.__setattr__(self, "failure_policy", spec.failure_policy)
        object.__setattr__(self, "identifier_kind", spec.identifier_kind)
        object.__setattr__(self, "spec", spec)

    @property
    def window_ms(self) -> int:
        return self.spec.window_ms


# Anonymous traffic: a Redis outage must not become a site outage, so open.
BY_IP = Preset(
    scope="ip", limit=100, window_s=60, failure_policy=FailurePolicy.OPEN, identifier_kind=IdentifierKind.IP
)
# Signed-in users: sessions already fail closed without Redis; the limit adds nothing then.
# Resolution 1% of the window: at most ~100 log members (~3 KB) instead of 1,000 (~100 KB).
BY_USER = Preset(scope="user", limit=1_000, window_s=60, resolution_s=0.6, failure_policy=FailurePolicy.OPEN)
# API keys: a quota clients pay for, and machine clients honour Retry-After; closed.
# Resolution 1% of the window: at most ~100 log members (~3 KB) instead of 10,000 (~1.1 MB).
API = Preset(
    scope="api",
    limit=10_000,
    window_s=3_600,
    resolution_s=36,
    failure_policy=FailurePolicy.CLOSED,
    identifier_kind=IdentifierKind.SECRET,
)


PRESET_VARIABLES = {"RATELIMIT_BY_IP": BY_IP, "RATELIMIT_BY_USER": BY_USER, "RATELIMIT_API": API}
_PRESET_SPEC = re.compile(r"(?P<limit>\d+)/(?P<window>\d+(?:\.\d+)?)(?::(?P<policy>open|closed))?")


def parse_preset(variable: str, raw: str, base: Preset) -> Preset:
    """`base` with the limit, window and policy of `raw` (see the module docstring). Pure.

    Raises:
        ConfigError: `raw` is not of that shape or out of the limiter's bounds; names `variable`.
    """
    match = _PRESET_SPEC.fullmatch(raw.strip().lower())
    if match is None:
        raise ConfigError(
            f"{variable} must be LIMIT/WINDOW_SECONDS with an optional :open or :closed "
            f"(e.g. {base.limit}/{base.window_s:g}:{base.failure_policy}), got {raw!r}"
        )
    window_s = float(match["window"])
    resolution_s = None
    if base.resolution_s is not None:
        resolution_s = base.resolution_s * window_s / base.window_s
    try:
        return dataclasses.replace(
            base,
            limit=int(match["limit"]),
            window_s=window_s,
            resolution_s=resolution_s,
            failure_policy=FailurePolicy(match["policy"]) if match["policy"] else base.failure_policy,
        )
    except InvalidRateLimit as exc:
        raise ConfigError(f"{variable}: {exc}") from None
