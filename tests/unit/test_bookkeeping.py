"""`squash`: which writes of a batch a later write of the same batch makes redundant. Pure."""

from __future__ import annotations

import pytest

from workers.bookkeeping import Command, squash

HB = ("HSET", "w", ("last_heartbeat", "t1"))


@pytest.mark.parametrize(
    ("commands", "absent", "expected"),
    [
        # the last TTL of a key wins, whatever lies between
        (
            [("EXPIRE", "s", (90,)), ("SADD", "s", ("m",)), ("EXPIRE", "s", (30,))],
            (),
            [("SADD", "s", ("m",)), ("EXPIRE", "s", (30,))],
        ),
        (
            [("EXPIRE", "s", (90,)), ("DEL", "s", ()), ("EXPIRE", "s", (30,))],
            (),
            [("DEL", "s", ()), ("EXPIRE", "s", (30,))],
        ),
        # an EXPIRE with options, or one that deletes, is kept
        (
            [("EXPIRE", "s", (90, "NX")), ("EXPIRE", "s", (30,))],
            (),
            [("EXPIRE", "s", (90, "NX")), ("EXPIRE", "s", (30,))],
        ),
        ([("EXPIRE", "s", (0,)), ("SADD", "s", ("m",)), ("EXPIRE", "s", (30,))], (), None),
        # other keys do not count
        ([("EXPIRE", "a", (9,)), ("EXPIRE", "b", (9,))], (), None),
        # HSETs of one key merge, the later value winning, across its EXPIREs and other keys
        (
            [
                ("HSET", "j", ("a", 1, "b", 2)),
                ("EXPIRE", "j", (5,)),
                ("ZADD", "r", (1, "j")),
                ("HSET", "j", ("b", 3, "c", 4)),
            ],
            (),
            [("HSET", "j", ("a", 1, "b", 3, "c", 4)), ("EXPIRE", "j", (5,)), ("ZADD", "r", (1, "j"))],
        ),
        # ... and across increments of other fields, never of the same field
        (
            [("HSET", "w", ("state", "busy")), ("HINCRBY", "w", ("n", 1)), HB],
            (),
            [("HSET", "w", ("state", "busy", "last_heartbeat", "t1")), ("HINCRBY", "w", ("n", 1))],
        ),
        ([("HSET", "w", ("n", 5)), ("HINCRBY", "w", ("n", 1)), ("HSET", "w", ("n", 9))], (), None),
        # nor across a DEL, or an EXPIRE that deletes
        ([("HSET", "j", ("a", 1)), ("DEL", "j", ()), ("HSET", "j", ("b", 2))], (), None),
        ([("HSET", "j", ("a", 1)), ("EXPIRE", "j", (-1,)), ("HSET", "j", ("b", 2))], (), None),
        # an EXPIRE of a key known absent is a no-op, unless the batch wrote the key first
        ([("EXPIRE", "deps", (60,)), ("EXPIRE", "j", (60,))], ("deps",), [("EXPIRE", "j", (60,))]),
        ([("SADD", "deps", ("x",)), ("EXPIRE", "deps", (60,))], ("deps",), None),
    ],
)
def test_squash(commands: list[Command], absent: tuple[str, ...], expected: list[Command] | None) -> None:
    assert squash(commands, absent=absent) == (commands if expected is None else expected)
