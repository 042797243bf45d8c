"""`translate_errors`: the one translation of redis-py errors, role- and Sentinel-aware."""

from __future__ import annotations

import redis

from cache.connections import Role, translate_errors
from cache.errors import RedisUnavailable
from cache.realtime.envelope import RealtimeError
from cache.sessions.core import SessionStoreUnavailable
from cache.settings import Settings
from jobs.errors import EnqueueUnavailable, JobError

PLAIN = Settings.from_env(
    {"REDIS_URL": "redis://127.0.0.1:7001/0", "CACHE_REDIS_URL": "redis://127.0.0.1:7002/0"}
)
SENTINEL = Settings.from_env({"REDIS_SENTINELS": "127.0.0.1:26379,127.0.0.1:26380"})


def test_unreachable_names_the_role_setting_or_the_sentinels() -> None:
    down = redis.ConnectionError("Error 111 connecting")
    for role, setting in ((Role.PRIMARY, "REDIS_URL"), (Role.CACHE, "CACHE_REDIS_URL")):
        plain = translate_errors(role, PLAIN).translated(down)
        assert isinstance(plain, RedisUnavailable) and plain.setting == setting
    translated = translate_errors(Role.PRIMARY, SENTINEL).translated(down)
    assert isinstance(translated, RedisUnavailable)
    assert translated.setting == "REDIS_SENTINELS"
    assert "REDIS_SENTINELS=127.0.0.1:26379" in str(translated)


def test_a_refused_password_names_redis_password() -> None:
    translated = translate_errors(Role.PRIMARY, SENTINEL).translated(redis.AuthenticationError("WRONGPASS"))
    assert isinstance(translated, RedisUnavailable)
    assert translated.setting == "REDIS_PASSWORD"


def test_other_errors_pass_through_unless_the_block_asks() -> None:
    refused = redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert translate_errors(Role.PRIMARY, PLAIN).translated(refused) is None
    closed = translate_errors(
        Role.PRIMARY, SENTINEL, error_class=SessionStoreUnavailable, action="read a session", all_errors=True
    ).translated(refused)
    assert isinstance(closed, SessionStoreUnavailable)
    assert closed.setting == "REDIS_SENTINELS"
    assert str(closed).startswith("session store unavailable: could not read a session on the primary Redis")
    rejected = translate_errors(Role.PRIMARY, PLAIN, action="replay events", refused_class=RealtimeError)
    assert isinstance(rejected.translated(refused), RealtimeError)


def test_a_full_primary_is_unavailable_for_writes() -> None:
    full = redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")
    assert translate_errors(Role.PRIMARY, PLAIN).translated(full) is None
    translated = translate_errors(Role.PRIMARY, PLAIN, error_class=EnqueueUnavailable, full=True).translated(
        full
    )
    assert isinstance(translated, EnqueueUnavailable) and isinstance(translated, JobError)
    assert str(translated).startswith("job not enqueued: ") and "full" in str(translated)
