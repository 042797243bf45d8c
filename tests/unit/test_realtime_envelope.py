"""The pure core of real-time events: validation, envelope, stream ids, backoff (no Redis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from cache.errors import ConfigError
from cache.realtime.envelope import (
    MAX_SEQ,
    Event,
    InvalidEnvelope,
    InvalidEvent,
    backlog_page,
    decode_entry,
    decode_envelope,
    encode_body,
    envelope_from_body,
    format_timestamp,
    id_before_ms,
    parse_replay,
    parse_stream_id,
    plan_replay,
    reconnect_delay_s,
    resolve_channel,
    resume_after,
    time_baseline,
    to_sse,
    validate_channel,
    validate_event_name,
    validate_pattern,
    validate_user_id,
)
from cache.realtime.service import RealtimeCore, RealtimeService, check_limits

pytestmark = pytest.mark.realtime

NOW = datetime(2024, 5, 1, 11, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("42", "42"), (42, "42"), ("a.b@c+d-e_F", "a.b@c+d-e_F"), ("x" * 128, "x" * 128)],
)
def test_valid_user_ids(given: str | int, expected: str) -> None:
    assert validate_user_id(given) == expected


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "user*", "x" * 129, "é", True, None, 4.2, "a\nb"])
def test_invalid_user_ids_name_the_argument(bad: object) -> None:
    with pytest.raises(InvalidEvent, match="user_id must be"):
        validate_user_id(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["report.ready", "email:sent", "job-progress", "a", "A" + "b" * 99])
def test_valid_event_names(good: str) -> None:
    assert validate_event_name(good) == good


@pytest.mark.parametrize("bad", ["", "1st", "has space", ".dot", "a" * 101, "x\n", None, 7])
def test_invalid_event_names(bad: object) -> None:
    with pytest.raises(InvalidEvent, match="event must start with a letter"):
        validate_event_name(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "channel"),
    [
        ("system:events", "system:events"),
        ("user:42:events", "user:42:events"),
        ("42", "user:42:events"),
        (42, "user:42:events"),
    ],
)
def test_resolve_channel(given: str | int, channel: str) -> None:
    assert resolve_channel(given) == channel


@pytest.mark.parametrize("bad", ["user:a:b:events", "system events", "user::events", "", "jobs:events"])
def test_resolve_channel_rejects_other_names(bad: str) -> None:
    with pytest.raises(InvalidEvent, match="expected 'system:events'"):
        resolve_channel(bad)


@pytest.mark.parametrize("bad", ["42", "user:42", "other:events", "user:*:events", 42])
def test_validate_channel_accepts_only_event_channels(bad: object) -> None:
    with pytest.raises(InvalidEvent, match="channel must be"):
        validate_channel(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "user :*", "a" * 201, "tab\there", None])
def test_invalid_patterns(bad: object) -> None:
    with pytest.raises(InvalidEvent, match="pattern must be"):
        validate_pattern(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0", (0, 0)),
        ("0-0", (0, 0)),
        ("1714561200123-4", (1714561200123, 4)),
        (f"{MAX_SEQ}-{MAX_SEQ}", (MAX_SEQ, MAX_SEQ)),
    ],
)
def test_parse_stream_id(text: str, parsed: tuple[int, int]) -> None:
    assert parse_stream_id(text) == parsed


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "-1",
        "1-",
        "a-1",
        "1-2-3",
        " 1-0",
        f"{MAX_SEQ + 1}-0",
        "$",
        None,
        5,
        "\u0661\u0662\u0663-0",
        "1-\uff10",
    ],
)
def test_parse_stream_id_rejects_garbage(bad: object) -> None:
    with pytest.raises(InvalidEvent, match="event id"):
        parse_stream_id(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("since", "newest", "resumed"),
    [("5-0", "9-0", "5-0"), ("99999999999999-0", "9-0", "9-0"), ("9-1", "9-0", "9-0"), ("7", "0-0", "0-0")],
)
def test_resume_after_clamps_an_id_beyond_the_newest(since: str, newest: str, resumed: str) -> None:
    assert resume_after(since, newest) == resumed


def _tick(stream_id: str) -> Event:
    return Event(id=stream_id, channel="user:a:events", event="tick", data={}, timestamp="t")


def test_backlog_page_stops_at_the_live_baseline() -> None:
    page = [_tick("1-0"), _tick("2-0")]
    assert backlog_page(page, "5-0") == (page, "2-0")  # a full page below the baseline: read on
    assert backlog_page(page, "2-0") == (page, None)  # reached it: live takes over
    assert backlog_page([*page, _tick("6-0")], "5-0") == (page, None)  # past it: live has those
    assert backlog_page([], "5-0") == ([], None)


def test_stream_ids_order_numerically_not_textually() -> None:
    assert parse_stream_id("9-0") < parse_stream_id("10-0")
    assert parse_stream_id("10-9") < parse_stream_id("10-10")


@pytest.mark.parametrize(
    ("ms", "before"), [(0, (0, 0)), (1, (0, MAX_SEQ)), (1714561200123, (1714561200122, MAX_SEQ))]
)
def test_id_before_ms(ms: int, before: tuple[int, int]) -> None:
    assert id_before_ms(ms) == before


def test_time_baseline_uses_milliseconds_of_redis_time() -> None:
    assert time_baseline(1714561200, 123999) == f"1714561200122-{MAX_SEQ}"


@pytest.mark.parametrize(
    ("now", "text"),
    [
        (NOW, "2024-05-01T11:00:00.123Z"),
        (datetime(2024, 5, 1, 13, 0, tzinfo=timezone(timedelta(hours=2))), "2024-05-01T11:00:00.000Z"),
    ],
)
def test_timestamps_are_utc_iso8601_with_z(now: datetime, text: str) -> None:
    assert format_timestamp(now) == text


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2024, 5, 1))


def test_body_and_envelope_round_trip() -> None:
    body = encode_body("report.ready", {"report_id": "r1", "pages": 3}, NOW, max_bytes=1000)
    assert body.startswith(b'{"event":')
    envelope = envelope_from_body("1714561200123-0", body)
    assert orjson.loads(envelope) == {
        "id": "1714561200123-0",
        "event": "report.ready",
        "data": {"report_id": "r1", "pages": 3},
        "timestamp": "2024-05-01T11:00:00.123Z",
    }
    event = decode_envelope("user:1:events", envelope)
    assert event == Event(
        "1714561200123-0",
        "user:1:events",
        "report.ready",
        {"report_id": "r1", "pages": 3},
        "2024-05-01T11:00:00.123Z",
    )
    assert event.to_json() == envelope


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "data must be a JSON object"),
        ("text", "data must be a JSON object"),
        (None, "data must be a JSON object"),
        ({"x": object()}, "not JSON-serialisable"),
        ({1: "non-string key"}, "not JSON-serialisable"),
        ({"big": "x" * 2000}, "the limit is 1000"),
    ],
)
def test_bad_data_is_refused_before_anything_is_written(data: object, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        encode_body("report.ready", data, NOW, max_bytes=1000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "expected a JSON object"),
        ('{"event":"a","data":{},"timestamp":"t"}', "'id' missing"),
        ('{"id":"x","event":"a","data":{},"timestamp":"t"}', "not a stream id"),
        ('{"id":"1-0","data":{},"timestamp":"t"}', "'event' missing"),
        ('{"id":"1-0","event":"a","data":[],"timestamp":"t"}', "'data' missing or not an object"),
        ('{"id":"1-0","event":"a","data":{}}', "'timestamp' missing"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_malformed_envelopes_say_what_is_wrong(payload: str | bytes, message: str) -> None:
    with pytest.raises(InvalidEnvelope, match=message):
        decode_envelope("system:events", payload)


def test_decode_entry_accepts_bytes_fields() -> None:
    body = encode_body("tick", {"n": 1}, NOW, max_bytes=1000)
    event = decode_entry("system:events", "5-1", {b"body": body})
    assert (event.id, event.event, event.data) == ("5-1", "tick", {"n": 1})


@pytest.mark.parametrize(
    ("fields", "message"),
    [({}, "no 'body'"), ({"body": "{"}, "not JSON"), ({"body": "1"}, "not a JSON object")],
)
def test_decode_entry_rejects_bad_entries(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidEnvelope, match=message):
        decode_entry("system:events", "5-1", fields)


def test_sse_frame_carries_the_id_for_last_event_id() -> None:
    event = Event("7-0", "user:1:events", "email.sent", {"to": "a@b"}, "2024-05-01T11:00:00.123Z")
    assert to_sse(event) == f"id: 7-0\nevent: email.sent\ndata: {event.to_json()}\n\n"


def test_replay_plan_reads_strictly_after_the_last_id() -> None:
    reads = plan_replay({"42": "5-1", "system:events": "0", "user:7:events": f"{MAX_SEQ}-{MAX_SEQ}"})
    assert [(r.channel, r.key, r.start) for r in reads] == [
        ("user:42:events", "kx:stream:user:42:events", "(5-1"),
        ("system:events", "kx:stream:system:events", "(0-0"),
    ]


@pytest.mark.parametrize(("positions", "message"), [({"a:b": "0"}, "expected"), ({"42": "x"}, "event id")])
def test_replay_plan_rejects_bad_input(positions: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        plan_replay(positions)


def test_parse_replay_skips_malformed_entries_and_keeps_order() -> None:
    reads = plan_replay({"1": "0"})
    body = encode_body("a", {}, NOW, max_bytes=1000)
    events, skipped = parse_replay(
        reads, [[(b"1-0", {b"body": body}), (b"2-0", {b"oops": b"x"}), ("3-0", {"body": body})]]
    )
    assert [e.id for e in events["user:1:events"]] == ["1-0", "3-0"]
    assert skipped == 1


@pytest.mark.parametrize(
    ("attempt", "rand", "delay"),
    [
        (0, 0.0, 0.05),
        (0, 0.5, 0.075),
        (1, 0.0, 0.1),
        (3, 0.5, 0.6),
        (6, 0.0, 2.5),  # 6.4 s capped at 5 s
        (10_000, 0.0, 2.5),  # no overflow for absurd attempt counts
        (10_000, 0.999, 4.9975),
    ],
)
def test_reconnect_delay_grows_caps_and_jitters(attempt: int, rand: float, delay: float) -> None:
    assert reconnect_delay_s(attempt, rand) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"stream_maxlen": 0}, "stream_maxlen"),
        ({"stream_ttl_s": -1}, "stream_ttl_s"),
        ({"max_event_bytes": 1.5}, "max_event_bytes"),
        ({"stream_maxlen": True}, "stream_maxlen"),
    ],
)
def test_limits_must_be_positive_integers(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be a positive integer"):
        RealtimeCore(**kwargs)  # type: ignore[arg-type]
    check_limits(1, 1, 1)


def test_publish_call_validates_and_uses_the_injected_clock() -> None:
    core = RealtimeCore(stream_maxlen=50, stream_ttl_s=60, clock=lambda: NOW.timestamp())
    script_keys, args, errors = core._publish_call("user:9:events", "report.ready", {"id": 1})
    assert script_keys == ["kx:stream:user:9:events"]
    assert errors.action == "publish 'report.ready' to user:9:events"
    assert args[:3] == ["user:9:events", 50, 60_000]
    assert orjson.loads(args[3])["timestamp"] == "2024-05-01T11:00:00.123Z"
    with pytest.raises(InvalidEvent, match="channel must be"):
        core._publish_call("user:9", "report.ready", {})


def test_invalid_publish_writes_nothing(fake_redis: object) -> None:
    service = RealtimeService(fake_redis, clock=lambda: NOW.timestamp())  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="user_id"):
        service.publish_user_event("a:b", "report.ready", {})
    with pytest.raises(InvalidEvent, match="event must"):
        service.publish_system_event("bad name", {})
    with pytest.raises(InvalidEvent, match="data must be"):
        service.publish_user_event(1, "report.ready", ["list"])  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="event id"):
        service.events_since(1, "yesterday")
    assert fake_redis.keys("*") == []  # type: ignore[attr-defined]
