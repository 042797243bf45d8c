"""Every script and MULTI the project sends touches one hash slot, as a Redis Cluster requires.

Recorded, not listed: the server's MONITOR stream while `slot_driver` runs every
service's operations (with `RQ_KEY_PREFIX={rq}`, as on a Cluster), including a worker
and a maintenance pass. Each EVAL/EVALSHA's KEYS, each command a script runs, and each
WATCH + MULTI..EXEC block of one connection must map to one slot (`key_slot`, with the
server's own `COMMAND GETKEYS` naming the keys). Every script in cache/lua must be seen.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources

import pytest
import redis
from redis.crc import key_slot

from cache.lua import source
from tests.integration.processes import process_env
from workers.dev.servers import PROJECT_ROOT, RedisServer

pytestmark = pytest.mark.connection

END = b"kx-slot-recording-ends"
# Split by redis-py's Cluster client into one command per slot (outside a MULTI).
SPLIT_BY_THE_CLIENT = frozenset({b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"})
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b", b'"': b'"', b"\\": b"\\"}


def parse_monitor_line(line: bytes) -> tuple[bytes, list[bytes]]:
    """(client, argv) of one MONITOR line: `<time> [<db> <client>] "ARG" "ARG" ...`."""
    head, _, rest = line.partition(b"] ")
    client = head.rpartition(b" ")[2]
    return client, [_unescape(raw) for raw in _ARG.findall(rest)]


def _unescape(raw: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 2] == b"x":
            out += bytes([int(raw[i + 2 : i + 4], 16)])
            i += 4
        elif raw[i : i + 1] == b"\\":
            out += _ESCAPES.get(raw[i + 1 : i + 2], raw[i + 1 : i + 2])
            i += 2
        else:
            out += raw[i : i + 1]
            i += 1
    return bytes(out)


@dataclass
class Recording:
    primary: redis.Redis
    commands: list[tuple[bytes, list[bytes]]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def stop(self) -> None:
        """End the recording: the END marker comes after everything sent before it."""
        self.primary.echo(END)
        assert self.reader is not None
        self.reader.join(120)
        assert not self.reader.is_alive(), "MONITOR never delivered the END marker"


@pytest.fixture
def recording(primary: redis.Redis) -> Iterator[Recording]:
    """MONITOR on the test PRIMARY until `stop()`."""
    kwargs = primary.connection_pool.connection_kwargs
    connection = redis.Connection(host=kwargs["host"], port=kwargs["port"], socket_timeout=120)
    connection.send_command("MONITOR")
    assert connection.read_response() in (b"OK", "OK")
    found = Recording(primary)

    def read() -> None:
        while True:
            client, argv = parse_monitor_line(connection.read_response())
            if argv[:2] == [b"ECHO", END]:
                return
            found.commands.append((client, argv))

    found.reader = threading.Thread(target=read, daemon=True)
    found.reader.start()
    try:
        yield found
    finally:
        if found.reader.is_alive():
            found.stop()
        connection.disconnect()


@pytest.fixture
def raw(primary: redis.Redis, primary_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the test PRIMARY that never decodes: key names stay bytes."""
    client = primary_server.client()
    yield client
    client.close()


def _keys(client: redis.Redis, argv: list[bytes]) -> list[bytes]:
    try:
        found = client.command_getkeys(*argv)  # redis-py answers str: our keys are UTF-8
        return [key.encode() if isinstance(key, str) else key for key in found]
    except redis.ResponseError:  # a command without keys
        return []


def _slots(found: list[bytes]) -> set[int]:
    return {key_slot(key) for key in found}


def check(client: redis.Redis, commands: list[tuple[bytes, list[bytes]]]) -> tuple[list[str], set[str]]:
    """(every call that spans slots, the SHA1s of the scripts run)."""
    problems: list[str] = []
    shas: set[str] = set()
    blocks: dict[bytes, list[bytes]] = {}  # connection -> keys of its WATCH/MULTI so far
    in_multi: set[bytes] = set()
    script: tuple[list[bytes], set[int]] = ([], set())  # the running script's argv and slots
    for who, argv in commands:
        name = argv[0].upper() if argv else b""
        if who == b"lua":
            used = _keys(client, argv)
            if script[1] and not _slots(used) <= script[1]:
                problems.append(f"script {script[0][:3]} ran {argv[:4]} on another slot")
            continue
        if name in (b"EXEC", b"DISCARD", b"UNWATCH"):
            block = blocks.pop(who, [])
            in_multi.discard(who)
            if name == b"EXEC" and len(_slots(block)) > 1:
                problems.append(f"MULTI of {who!r} spans slots: {sorted(set(block))[:6]}")
            continue
        if name == b"MULTI":
            in_multi.add(who)
            blocks.setdefault(who, [])
            continue
        used = _keys(client, argv)
        if name in (b"EVAL", b"EVALSHA"):
            shas.add(argv[1].decode() if name == b"EVALSHA" else hashlib.sha1(argv[1]).hexdigest())
            script = (argv, _slots(used))
        if name == b"WATCH" or who in in_multi:
            blocks.setdefault(who, []).extend(used)
        elif len(_slots(used)) > 1 and name not in SPLIT_BY_THE_CLIENT:
            problems.append(f"{argv[:3]} spans slots: {used[:6]}")
    return problems, shas


def all_script_shas() -> dict[str, str]:
    names = [
        p.name[:-4]
        for p in resources.files("cache.lua").iterdir()
        if p.name.endswith(".lua") and not p.name.startswith("_")  # `_` files are only included
    ]
    return {hashlib.sha1(source(n).encode()).hexdigest(): n for n in names}


def test_every_script_and_multi_touches_one_slot(
    recording: Recording, raw: redis.Redis, redis_env: dict[str, str]
) -> None:
    env = process_env(redis_env, RQ_KEY_PREFIX="{rq}", CACHE_REDIS_URL=redis_env["REDIS_URL"])
    run = subprocess.run(
        [sys.executable, "-m", "tests.integration.slot_driver"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    recording.stop()

    problems, shas = check(raw, recording.commands)

    assert problems == []
    missing = {name for sha, name in all_script_shas().items() if sha not in shas}
    assert missing == set(), "the driver must run every script in cache/lua"
    waits = [i for i, (_who, argv) in enumerate(recording.commands) if argv[:1] == [b"WAIT"]]
    assert waits, "the durable enqueue WAITs"
    for at in waits:  # right after a write of its own connection, next to the job
        who = recording.commands[at][0]
        before = [argv for w, argv in recording.commands[:at] if w == who][-1]
        assert before[0] == b"SET" and before[1].startswith(b"{rq}:job:"), before
        assert before[1].endswith(b":kx-durable")
    multis = sum(1 for _who, argv in recording.commands if argv[:1] == [b"MULTI"])
    assert multis >= 5, "the driver's MULTIs (email marker, bulk enqueue, requeue, ...) were recorded"


def test_a_cross_slot_multi_and_script_are_caught(raw: redis.Redis) -> None:
    """The checker itself: a MULTI over two slots, and a script whose KEYS span two slots."""
    commands = [
        (b"c1", [b"MULTI"]),
        (b"c1", [b"SET", b"{a}x", b"1"]),
        (b"c1", [b"SET", b"{b}x", b"1"]),
        (b"c1", [b"EXEC"]),
        (b"c2", [b"EVALSHA", b"0" * 40, b"2", b"{a}1", b"{b}1"]),
        (b"c2", [b"MGET", b"{a}1", b"{b}1"]),
        (b"c3", [b"DEL", b"{a}1", b"{b}1"]),  # split by the Cluster client: fine
    ]
    problems, _ = check(raw, commands)
    assert len(problems) == 3, problems


def test_monitor_lines_are_parsed_with_their_escapes() -> None:
    line = b'1.5 [0 127.0.0.1:5] "SET" "a \\"b\\"" "\\x00\\xff\\n"'
    assert parse_monitor_line(line) == (b"127.0.0.1:5", [b"SET", b'a "b"', b"\x00\xff\n"])
    assert parse_monitor_line(b'1.5 [0 lua] "GET" "k"') == (b"lua", [b"GET", b"k"])
