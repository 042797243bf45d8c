"""The three rate-limit presets, overridable from the environment.

`RATELIMIT_BY_IP`, `RATELIMIT_BY_USER` and `RATELIMIT_API` take `LIMIT/WINDOW_SECONDS`,
optionally `:open` or `:closed` for the failure policy, e.g. `300/60` or `5000/3600:open`.
A preset kept approximate for memory (user, API) keeps its resolution at the same
fraction of the new window, so its memory bound per key does not change.
"""

from __future__ import annotations

import dataclasses
import re

from cache.errors import ConfigError
from cache.ratelimit.core import API, BY_IP, BY_USER, FailurePolicy, InvalidRateLimit, Preset

PRESET_VARIABLES = {"RATELIMIT_BY_IP": BY_IP, "RATELIMIT_BY_USER": BY_USER, "RATELIMIT_API": API}
_SPEC = re.compile(r"(?P<limit>\d+)/(?P<window>\d+(?:\.\d+)?)(?::(?P<policy>open|closed))?")


def parse_preset(variable: str, raw: str, base: Preset) -> Preset:
    """`base` with the limit, window and policy of `raw` (see the module docstring). Pure.

    Raises:
        ConfigError: `raw` is not of that shape or out of the limiter's bounds; names `variable`.
    """
    match = _SPEC.fullmatch(raw.strip().lower())
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
