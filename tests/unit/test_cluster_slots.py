"""Every key builder in `cache.keys`: keys one call touches together share a hash slot.

Each builder belongs to exactly one group below; a new builder fails
`test_every_builder_is_placed` until it is placed, so the layout cannot go stale. The
recorded check of the real calls is tests/integration/test_slots_recorded.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from cache import keys

# Caller-given text with braces in every position a hash tag could be cut at.
ODD = ["42", "}", "}x", "{", "{x}", "a}b{c", "{}", "x" * 300, "é"]
RQ_PREFIX = "{rq}"  # RQ_KEY_PREFIX on a Cluster: all of RQ on one slot


def slot(key: str) -> int:
    return key_slot(key.encode())


# Keys that one script or MULTI touches together, per caller-given value.
GROUPS: dict[str, Callable[[str], list[str]]] = {
    "sessions": lambda v: [
        keys.session(v),
        keys.user_sessions(v),
        keys.idp_session_sessions(v),
        keys.idp_subject_sessions(v),
        keys.session("another-id"),  # rotate: old and new hash in one script
        keys.user_sessions("another-user"),  # all sessions: one slot
    ],
    "cache namespace": lambda v: [
        keys.cache_namespace_version("users"),
        keys.cache_entry("users", v),
        keys.cache_fill_lock("users", v),
    ],
    "email idempotency": lambda v: [keys.email_sent_marker(v), keys.email_sending_claim(v)],
    "email bulk": lambda v: [keys.email_bulk_info("0" * 32), keys.email_bulk_outcomes("0" * 32)],
    "rq slot": lambda v: [
        f"{RQ_PREFIX}:queue:email",
        keys.quarantine(RQ_PREFIX),
        keys.intermediate_seen(f"{RQ_PREFIX}:queue:{v}:intermediate"),
        keys.durable_probe(f"{RQ_PREFIX}:job:{v}"),
    ],
}
PLACED = {
    "sessions": {"session", "user_sessions", "idp_session_sessions", "idp_subject_sessions"},
    "cache namespace": {"cache_namespace_version", "cache_entry", "cache_fill_lock"},
    "email idempotency": {"email_sent_marker", "email_sending_claim"},
    "email bulk": {"email_bulk_info", "email_bulk_outcomes"},
    "rq slot": {"quarantine", "intermediate_seen", "durable_probe"},
}
# Keys every call touches alone (or beside keys of no script): any slot will do.
ALONE = {
    "cache_counters",  # HINCRBY in a non-transactional pipeline
    "logout_token_jti",  # SET NX
    "rate_limit",  # one key per ratelimit_check call, the whole name is the tag
    "rate_limit_log",
    "rate_limit_counters",
    "user_channel",  # a channel, not a key
    "event_stream",  # one key per realtime_publish call
    "job_counters",  # HINCRBY in a non-transactional pipeline, after RQ's writes
}
# Helpers that read a key's parts, not builders.
NOT_BUILDERS = {"rate_limit_log_scope", "event_stream_channel", "_email_tag"}


@pytest.mark.parametrize("group", sorted(GROUPS))
@pytest.mark.parametrize("value", ODD)
def test_a_group_shares_one_slot(group: str, value: str) -> None:
    found = GROUPS[group](value)
    assert len({slot(key) for key in found}) == 1, found


def test_email_markers_of_different_keys_spread_over_slots() -> None:
    """One tag per idempotency key, not one for all: emails shard."""
    assert len({slot(keys.email_sent_marker(f"welcome-{n}")) for n in range(50)}) > 40


def test_every_builder_is_placed() -> None:
    builders = {name for name, member in inspect.getmembers(keys, inspect.isfunction)}
    placed = set().union(*PLACED.values())
    assert builders - NOT_BUILDERS == placed | ALONE
    assert not placed & ALONE


def test_the_sessions_tag_comes_before_any_caller_text() -> None:
    for build in (keys.session, keys.user_sessions, keys.idp_session_sessions, keys.idp_subject_sessions):
        key = build("}{")
        assert key.index(keys.SESSIONS_TAG) < key.index("}{"), key
