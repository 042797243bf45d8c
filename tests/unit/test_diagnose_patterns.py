"""`key_pattern`: which keys are grouped together in the biggest-keys report (table-driven)."""

from __future__ import annotations

import secrets
import uuid

import pytest

from cache import keys
from workers.cli.diagnose import MAX_PATTERN_LENGTH, key_pattern

pytestmark = pytest.mark.ops

SESSION_ID = "Xk3_p9QzL-aB7vR2mN8cT1yW4uE6oI0sD5fG9hJ2kLq"  # token_urlsafe(32) shape


@pytest.mark.parametrize(
    ("key", "pattern"),
    [
        # sessions: one pattern whatever the id
        (keys.session(SESSION_ID), "session:{sessions}:*"),
        (keys.session("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"), "session:{sessions}:*"),  # no digit
        (keys.user_sessions("42"), "kx:{sessions}:user:*"),
        (keys.user_sessions("user@example.com"), "kx:{sessions}:user:*"),
        # RQ keys: uuids and hex worker names starred, queue names kept
        (f"rq:job:{uuid.UUID(int=7)}", "rq:job:*"),
        (f"rq:results:{uuid.UUID(int=7)}", "rq:results:*"),
        (f"rq:worker:{uuid.UUID(int=9).hex}", "rq:worker:*"),
        ("rq:queue:email", "rq:queue:email"),
        ("rq:wip:report", "rq:wip:report"),
        ("rq:worker:worker-email-3", "rq:worker:worker-email-*"),
        ("rq:registry:failed:email", "rq:registry:failed:email"),
        # our keys: hash tags kept, ids inside them starred
        (keys.rate_limit_log("ip", 60_000, "203.0.113.7"), "kx:rl:{ip:*:*}"),
        (keys.rate_limit_log("api", 3_600_000, "h:" + "0123456789abcdef" * 2), "kx:rl:{api:*:h:*}"),
        (keys.cache_entry("users", "user:42"), "kx:cache:{users}:k:user:*"),
        (keys.cache_fill_lock("users", "user:42"), "kx:cache:{users}:l:user:*"),
        (keys.job_counters("email"), "kx:stats:jobs:email"),
        (keys.event_stream(keys.user_channel("1001")), "kx:stream:user:*:events"),
        (keys.email_sent_marker(str(uuid.UUID(int=3))), "kx:email:{idem:*}:sent"),
        # words survive, ids inside words are starred
        ("report_2026_q1_summary", "report_*_q1_summary"),
        ("GenerateReport", "GenerateReport"),
        ("cafe", "cafe"),
        ("deadbeef", "deadbeef"),  # 8 hex letters, no digit: a word as likely as an id
        ("deadbeef00", "*"),
        ("v2", "v2"),
        ("price:-3.50", "price:*"),
        ("", ""),
        ("a::b", "a::b"),
        # hostile names: control characters escaped, so no forged output lines
        (b"evil\nstatus: OK", "evil\\x0astatus: OK"),
        (b"\xff\xfe:1", "\\xff\\xfe:*"),
    ],
)
def test_key_pattern(key: str | bytes, pattern: str) -> None:
    assert key_pattern(key) == pattern


def test_random_session_ids_always_share_one_pattern() -> None:
    patterns = {key_pattern(keys.session(secrets.token_urlsafe(32))) for _ in range(2_000)}
    assert patterns == {"session:{sessions}:*"}


def test_bytes_and_str_give_the_same_pattern() -> None:
    job_key = f"rq:job:{uuid.UUID(int=1)}"
    assert key_pattern(job_key.encode()) == key_pattern(job_key) == "rq:job:*"


def test_long_pattern_is_cut() -> None:
    pattern = key_pattern("word:" * 100)
    assert len(pattern) == MAX_PATTERN_LENGTH
    assert pattern.endswith("...")
