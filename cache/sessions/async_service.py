"""The asyncio twin of `cache.sessions.service`, for ASGI servers.

Same keys, Lua scripts, checks and replies: everything but the awaiting comes from
`SessionCalls` (`cache.sessions.calls`) and `cache.sessions.core`, so the two services
cannot drift apart. Fails closed like the sync one: every Redis error is
`SessionStoreUnavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import redis.asyncio
from redis.client import NEVER_DECODE
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from cache import connections, keys, lua
from cache.connections import Role
from cache.sessions.calls import (
    OWNER_FIELDS,
    SCRIPT_NAMES,
    Call,
    Owner,
    SessionCalls,
    fail_closed,
    idp_session_index,
    idp_subject_index,
)
from cache.sessions.core import (
    BATCH_SIZE,
    DEFAULT_ABSOLUTE_TTL_S,
    DEFAULT_IDLE_TTL_S,
    MAX_DESTROY_ROUNDS,
    MAX_ID_ATTEMPTS,
    Session,
    SessionError,
    as_text,
    check_user_id,
    encode_data,
    is_well_formed_id,
    new_session_id,
)

__all__ = ["AsyncSessionService"]


# Session hashes are read undecoded: on a `decode_responses` client, bytes that are not
# UTF-8 (a hash written by hand) would make redis-py raise mid-reply; as bytes, the
# shared decoding reads them as no session.
_RAW: dict[str, Any] = {NEVER_DECODE: []}


class AsyncSessionService(SessionCalls):
    """`SessionService` on `redis.asyncio`; same arguments and methods, as coroutines.

    `client` defaults to `connections.build_async_client(Role.PRIMARY)` (every command
    bounded by `REDIS_CALL_TIMEOUT`); build one per event loop, e.g. in the ASGI lifespan.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | None = None,
        *,
        idle_ttl_s: float = DEFAULT_IDLE_TTL_S,
        absolute_ttl_s: float = DEFAULT_ABSOLUTE_TTL_S,
        slide_on_get: bool = True,
        max_data_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            idle_ttl_s=idle_ttl_s,
            absolute_ttl_s=absolute_ttl_s,
            slide_on_get=slide_on_get,
            max_data_bytes=max_data_bytes,
            clock=clock,
        )
        self.client = client if client is not None else connections.build_async_client(Role.PRIMARY)
        self._scripts: dict[str, AsyncScript] = {
            n: lua.async_script(self.client, f"session_{n}") for n in SCRIPT_NAMES
        }

    async def _run(self, name: str, call: Call, action: str) -> Any:
        """The script's reply as bytes, even on a decoding client (see `_RAW`); loaded again on NOSCRIPT."""
        script = self._scripts[name]
        command = ("EVALSHA", script.sha, len(call[0]), *call[0], *call[1])
        with fail_closed(action=action):
            try:
                return await self._raw(*command)
            except NoScriptError:
                await self.client.script_load(script.script)
                return await self._raw(*command)

    async def _raw(self, *command: Any) -> Any:
        """One command whose reply stays bytes (see `_RAW`)."""
        return await cast(Any, self.client).execute_command(*command, **_RAW)

    async def create(
        self,
        user_id: str | int,
        data: Mapping[str, Any] | None = None,
        *,
        ttl_s: float | None = None,
        absolute_ttl_s: float | None = None,
        idp_sid: str | None = None,
        idp_sub: str | None = None,
    ) -> str:
        """As `SessionService.create`."""
        plan = self._plan_create(
            user_id, data, ttl_s=ttl_s, absolute_ttl_s=absolute_ttl_s, idp_sid=idp_sid, idp_sub=idp_sub
        )
        for _ in range(MAX_ID_ATTEMPTS):
            session_id = new_session_id()
            if await self._run("create", plan.call(session_id), "create a session") == 1:
                return session_id
        raise SessionError(f"could not draw an unused session id in {MAX_ID_ATTEMPTS} attempts")

    async def get(self, session_id: object, *, touch: bool | None = None) -> Session | None:
        """As `SessionService.get`."""
        if not is_well_formed_id(session_id):
            return None
        slide = self.slide_on_get if touch is None else touch
        call = self._touch_call(session_id, slide=slide, fetch=True)
        return self._read_session(session_id, self._touched(await self._run("touch", call, "read a session")))

    async def refresh(self, session_id: object) -> bool:
        """As `SessionService.refresh`."""
        if not is_well_formed_id(session_id):
            return False
        call = self._touch_call(session_id, slide=True)
        return bool(self._touched(await self._run("touch", call, "refresh a session")) == 1)

    async def update(
        self, session_id: object, changes: Mapping[str, Any], *, remove: Iterable[str] = ()
    ) -> bool:
        """As `SessionService.update`."""
        pairs, removed = self._check_update(changes, remove)
        if not is_well_formed_id(session_id):
            return False
        call = self._touch_call(session_id, slide=True, pairs=pairs, removed=removed)
        return bool(self._touched(await self._run("touch", call, "update a session")) == 1)

    async def _owner(self, session_id: str, action: str) -> Owner | None:
        with fail_closed(action=action):
            return Owner.read(await self._raw("HMGET", keys.session(session_id), *OWNER_FIELDS))

    async def rotate(self, session_id: object, *, changes: Mapping[str, Any] | None = None) -> str | None:
        """As `SessionService.rotate`."""
        pairs = encode_data(changes or {}, max_bytes=self.max_data_bytes)
        if not is_well_formed_id(session_id):
            return None
        owner = await self._owner(session_id, "rotate a session")
        if owner is None:
            return None
        for _ in range(MAX_ID_ATTEMPTS):
            new_id = new_session_id()
            call = self._rotate_call(session_id, new_id, owner, pairs)
            result = self._rotated(await self._run("rotate", call, "rotate a session"), new_id)
            if result != "":
                return result
        raise SessionError(f"could not draw an unused session id in {MAX_ID_ATTEMPTS} attempts")

    async def destroy(self, session_id: object) -> bool:
        """As `SessionService.destroy`."""
        if not is_well_formed_id(session_id):
            return False
        owner = await self._owner(session_id, "destroy a session")
        if owner is None:
            return False
        call = self._destroy_call(owner.index_keys()[0], [(session_id, owner)])
        count, _ = await self._run("destroy_many", call, "destroy a session")
        return bool(int(count) == 1)

    async def list_for_user(self, user_id: str | int) -> list[Session]:
        """As `SessionService.list_for_user`."""
        uid = check_user_id(user_id)
        now = self._now_ms()
        with fail_closed(action="list a user's sessions"):
            found = await self.client.zrangebyscore(keys.user_sessions(uid), f"({now}", "+inf")
        ids = [as_text(i) for i in found]
        sessions: list[Session] = []
        for start in range(0, len(ids), BATCH_SIZE):
            call = self._list_call(uid, now, ids[start : start + BATCH_SIZE])
            sessions += self._listed(await self._run("list", call, "list a user's sessions"))
        return sorted(sessions, key=lambda s: s.created_at)

    async def destroy_all_for_user(self, user_id: str | int) -> int:
        """As `SessionService.destroy_all_for_user`."""
        return await self._destroy_index(
            keys.user_sessions(check_user_id(user_id)), "log a user out everywhere"
        )

    async def logout_by_idp_session(self, idp_sid: str) -> int:
        """As `SessionService.logout_by_idp_session`."""
        return await self._destroy_index(idp_session_index(idp_sid), "log out an IdP session")

    async def logout_by_subject(self, idp_sub: str) -> int:
        """As `SessionService.logout_by_subject`."""
        return await self._destroy_index(idp_subject_index(idp_sub), "log out an IdP subject")

    async def _destroy_index(self, index: str, action: str) -> int:
        destroyed = 0
        for _ in range(MAX_DESTROY_ROUNDS):
            with fail_closed(action=action):
                batch = [as_text(i) for i in await self.client.zrange(index, 0, BATCH_SIZE - 1)]
                if not batch:
                    return destroyed
                pipe = self.client.pipeline(transaction=False)
                for session_id in batch:
                    pipe.execute_command("HMGET", keys.session(session_id), *OWNER_FIELDS, **_RAW)
                owners = [Owner.read(raw) for raw in await pipe.execute()]
            call = self._destroy_call(index, zip(batch, owners, strict=True))
            count, remaining = await self._run("destroy_many", call, action)
            destroyed += int(count)
            if int(remaining) == 0:
                return destroyed
        raise SessionError(f"sessions kept appearing; gave up after {MAX_DESTROY_ROUNDS} rounds")
