"""The script calls both session services send, checked without Redis."""

from __future__ import annotations

import pytest

from cache import keys
from cache.sessions.calls import Owner, SessionCalls, idp_session_index, idp_subject_index
from cache.sessions.core import InvalidSessionArgument, check_idp_value, decode_session


def calls() -> SessionCalls:
    return SessionCalls(max_data_bytes=1024, clock=lambda: 1_700_000_000.0)


def test_an_owner_names_exactly_the_indexes_it_is_in() -> None:
    assert Owner("u").index_keys() == [keys.user_sessions("u")]
    assert Owner("u", "s", "b").index_keys() == [
        keys.user_sessions("u"),
        keys.idp_session_sessions("s"),
        keys.idp_subject_sessions("b"),
    ]
    assert Owner("u", None, "b").script_args() == ["u", "", "b"]
    assert Owner.read([b"u", None, "b"]) == Owner("u", None, "b")
    assert Owner.read([None, None, None]) is None


def test_create_stores_the_idp_fields_only_when_given() -> None:
    plan = calls()._plan_create("u", {"a": 1}, ttl_s=60, absolute_ttl_s=120, idp_sid="s", idp_sub=None)
    script_keys, args = plan.call("ID")
    assert script_keys == [keys.session("ID"), keys.user_sessions("u"), keys.idp_session_sessions("s")]
    fields = dict(zip(args[4::2], args[5::2], strict=True))
    assert fields["isid"] == "s" and "isub" not in fields


def test_destroy_batch_counts_each_sessions_index_keys() -> None:
    script_keys, args = calls()._destroy_call("IDX", [("a", Owner("u", "s", None)), ("b", None)])
    assert script_keys == [
        "IDX",
        keys.session("a"),
        keys.user_sessions("u"),
        keys.idp_session_sessions("s"),
        keys.session("b"),
    ]
    assert args[1:] == ["a", "u", "s", "", 2, "b", "", "", "", 0]


@pytest.mark.parametrize("bad", ["", "x\ty", "\x7f", "z" * 257, 3, ["s"]])
def test_bad_idp_values_are_refused(bad: object) -> None:
    with pytest.raises(InvalidSessionArgument, match="idp_sid"):
        check_idp_value("idp_sid", bad)
    with pytest.raises(InvalidSessionArgument):
        idp_session_index(bad)
    with pytest.raises(InvalidSessionArgument):
        idp_subject_index(bad)


def test_none_is_no_idp_value_but_not_an_index() -> None:
    assert check_idp_value("idp_sid", None) is None
    with pytest.raises(InvalidSessionArgument, match="None"):
        idp_session_index(None)


def test_a_record_without_idp_fields_decodes_as_before() -> None:
    raw = {b"uid": b"u", b"created": b"1", b"seen": b"2", b"idle": b"3", b"abs": b"4", b"isub": b"b"}
    session = decode_session("ID", raw)
    assert session is not None and (session.idp_sid, session.idp_sub) == (None, "b")
