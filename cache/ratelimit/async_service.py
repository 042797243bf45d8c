"""The asyncio twin of `cache.ratelimit.service`, for ASGI servers.

Same keys, Lua script, presets, failure policies, decisions and process counters:
every step of a check but the script call comes from `LimiterCore`; this module only
awaits the I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
import redis.asyncio

from cache import connections, keys, lua
from cache.connections import REDIS_ERRORS, Role
from cache.identifiers import IdentifierKind
from cache.limits import FailurePolicy, Preset, Spec
from cache.ratelimit.core import PROCESS_STATS, Decision, LimiterCore, counter_field, flush_failed

__all__ = ["AsyncRateLimiter", "flush_counters_async"]


async def flush_counters_async(client: redis.asyncio.Redis, now: float | None = None) -> None:
    """`cache.ratelimit.service.flush_counters` on an asyncio client: the same hash, fields and protocol.

    Raises:
        redis.RedisError: Redis failed; the counts are kept for the next flush.
    """

    async def write(pending: dict[tuple[str, str], int]) -> None:
        pipe = client.pipeline(transaction=False)
        for (scope, outcome), count in pending.items():
            pipe.hincrby(keys.rate_limit_counters(), counter_field(scope, outcome), count)
        await pipe.execute()

    await PROCESS_STATS.flush_async(write, now)


class AsyncRateLimiter(LimiterCore):
    """`RateLimiter` on `redis.asyncio`; same arguments, the checks are coroutines.

    `client` defaults to `connections.build_async_client(Role.PRIMARY)`, whose every
    command ends within `REDIS_CALL_TIMEOUT`: that bounds how long a check waits while
    Redis is down. Build one limiter per event loop (e.g. in the ASGI lifespan).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | None = None,
        *,
        scope: str = "default",
        failure_policy: FailurePolicy = FailurePolicy.OPEN,
        identifier_kind: IdentifierKind = IdentifierKind.OPAQUE,
        by_ip: Preset | None = None,
        by_user: Preset | None = None,
        api: Preset | None = None,
        ipv6_prefix: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            scope=scope,
            failure_policy=failure_policy,
            identifier_kind=identifier_kind,
            by_ip=by_ip,
            by_user=by_user,
            api=api,
            ipv6_prefix=ipv6_prefix,
            monotonic=monotonic,
        )
        self.client = client if client is not None else connections.build_async_client(Role.PRIMARY)
        self._script = lua.async_script(self.client, "ratelimit_check")

    async def check(
        self,
        identifier: str | int,
        limit: int,
        window_s: float,
        *,
        cost: int = 1,
        now_ms: int | None = None,
        resolution_s: float | None = None,
    ) -> Decision:
        """See `RateLimiter.check`."""
        return await self._check(self._spec_for(limit, window_s, resolution_s), identifier, cost, now_ms)

    async def check_preset(
        self, preset: Preset, identifier: str | int, *, cost: int = 1, now_ms: int | None = None
    ) -> Decision:
        """See `RateLimiter.check_preset`."""
        return await self._check(preset.spec, identifier, cost, now_ms)

    async def limit_by_ip(self, ip: str, *, cost: int = 1, now_ms: int | None = None) -> Decision:
        return await self.check_preset(self.by_ip, ip, cost=cost, now_ms=now_ms)

    async def limit_by_user(
        self, user_id: str | int, *, cost: int = 1, now_ms: int | None = None
    ) -> Decision:
        return await self.check_preset(self.by_user, user_id, cost=cost, now_ms=now_ms)

    async def limit_api(self, api_key: str, *, cost: int = 1, now_ms: int | None = None) -> Decision:
        return await self.check_preset(self.api, api_key, cost=cost, now_ms=now_ms)

    async def _check(self, spec: Spec, identifier: object, cost: object, now_ms: object) -> Decision:
        key, args = self._prepare(spec, identifier, cost, now_ms)
        try:
            reply: list[int] = await self._script(keys=[key], args=args)
        except REDIS_ERRORS as exc:
            return self._unavailable(spec, exc)
        decision, flush_at = self._decided(spec, reply)
        if flush_at is not None:
            try:
                await flush_counters_async(self.client, flush_at)
            except REDIS_ERRORS as exc:
                flush_failed(exc)
        return decision
