"""The Lua scripts of every service: read once from package data, run by EVALSHA.

Each `.lua` file in this directory is shipped as package data (`cache = ["lua/*.lua"]`
in pyproject.toml) and named here without its suffix, e.g. `script(client, "cache_set")`.
A line `--#include _<name>` is replaced by that helper file's text (shared Lua functions).
The server keeps loaded scripts until a SCRIPT FLUSH or a failover to a replica that
never saw them; redis-py's `Script` answers that NOSCRIPT by loading the script again.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT

__all__ = ["LuaScript", "async_script", "script", "source"]


_INCLUDE = "--#include "  # a line naming a `_<name>.lua` file whose text replaces it


@functools.cache
def source(name: str) -> str:
    """The text of `cache/lua/<name>.lua`, includes expanded; read from the package once per process.

    Files named `_<name>.lua` are only included (shared helpers), never run on their own.
    """
    text = (resources.files(__name__) / f"{name}.lua").read_text(encoding="utf-8")
    return "".join(
        source(line[len(_INCLUDE) :].strip()) if line.startswith(_INCLUDE) else line
        for line in text.splitlines(keepends=True)
    )


class LuaScript:
    """One script bound to one client: EVALSHA straight away, loaded again on NOSCRIPT.

    redis-py's `Script.__call__` costs a few microseconds of Python per call (it copies
    keys and args, checks for a pipeline), so the common case calls EVALSHA directly and
    only a NOSCRIPT reply goes through the `Script`, which loads the script and retries.
    """

    __slots__ = ("_client", "_script")

    def __init__(self, client: Redis, name: str) -> None:
        self._client = client
        self._script = client.register_script(source(name))

    @property
    def sha(self) -> str:
        """SHA1 of the script, as the server names it."""
        sha: str = self._script.sha
        return sha

    def __call__(self, keys: Sequence[KeyT] = (), args: Sequence[EncodableT] = ()) -> Any:
        """The script's reply for `keys` and `args`, as redis-py decodes it."""
        try:
            return self._client.evalsha(self._script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return self._script(keys=keys, args=args)


def script(client: Redis, name: str) -> LuaScript:
    """`cache/lua/<name>.lua` bound to `client`; build it once per client, call it often."""
    return LuaScript(client, name)


def async_script(client: AsyncRedis, name: str) -> AsyncScript:
    """`cache/lua/<name>.lua` bound to an asyncio client; awaiting a call runs EVALSHA
    (redis-py loads the script again on NOSCRIPT)."""
    return client.register_script(source(name))
