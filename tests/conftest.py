"""Shared fixtures: real redis-servers on free ports with the project's own configs.

Nothing here talks to the machine's Redis on 6379. The PRIMARY and CACHE servers are
started once per test session (under xdist, once per worker); each test gets a flushed
server. Tests that kill or reconfigure a server use `redis_factory` for a private one.

A module that sets `BACKENDS = BOTH` (or a test marked `backends("single", "cluster")`)
runs every test that uses `redis_env` (and so `primary` and `cache_redis`) twice: on the
single servers and on the 6-node cluster (marker `cluster`). A test that reads one
server's INFO or URL, stops a server or depends on one server's topology is marked
`single_only` with its reason; a known cluster bug is `cluster_xfail` (strict).

The integration fixture modules are registered below as plugins, so a test names a
fixture as a parameter and never imports it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine

from cache import connections
from cache.appcache.platform import create_schema, drop_schema, make_engine
from cache.settings import reset_settings
from workers.dev import servers
from workers.dev.servers import CACHE_CONF, PRIMARY_CONF, RedisServer

# Property tests check behaviour, not speed: on a loaded machine (6 xdist processes on
# 2 cores) an example may take longer than Hypothesis' 200 ms deadline, or generating
# inputs may look slow to its health check; neither is a failure of the code.
settings.register_profile("kryonix", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kryonix")

# A module imported by another plugin comes first: pytest rewrites asserts only in
# plugins it imports itself.
pytest_plugins = [
    "tests.integration.processes",
    "tests.integration.browser",
    "tests.integration.cluster_fixtures",
    "tests.integration.dashboard_fixtures",
    "tests.integration.email_fixtures",
    "tests.integration.examples_browser_fixtures",
    "tests.integration.flask_fixtures",
    "tests.integration.ops_fixtures",
    "tests.integration.poison",
    "tests.integration.realtime_fixtures",
    "tests.integration.reports_fixtures",
    "tests.integration.sentinel",
    "tests.integration.starlette_fixtures",
    "tests.integration.examples_fixtures",  # imports flask_ and starlette_fixtures
]

SINGLE, CLUSTER = "single", "cluster"
BOTH = (SINGLE, CLUSTER)

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_configure(config: pytest.Config) -> None:
    """Let the processes the tests start be stopped by SIGINT (Ctrl-C), as from a terminal.

    Started with SIGINT ignored (a script's background job, as CI may start it), pytest would
    hand that on to every child, and the events tail's SIGINT test would hang. A Python
    handler is reset to the default at each child's exec; xdist workers run this too.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _take_own_ports()
    config.addinivalue_line("markers", "single_only(reason): runs on the single server only, not the cluster")
    config.addinivalue_line(
        "markers", "backends(*names): this test's backends, instead of its module's BACKENDS"
    )
    config.addinivalue_line(
        "markers", "cluster_xfail(reason): a known cluster bug; the cluster case must fail"
    )


def _take_own_ports() -> None:
    """Give this xdist process its own slice of the local servers' ports.

    No two processes then pick the same port, so a server another process stopped for a
    restart (a killed cluster node, a stopped Redis) can always bind its port again.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return
    index, count = int(worker[2:]), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    size = len(servers.PORTS) // count
    start = servers.PORTS.start + index * size
    servers.PORTS = range(start, start + size)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a `BACKENDS = BOTH` module's `redis_env` tests on the single servers and the cluster."""
    chosen = metafunc.definition.get_closest_marker("backends")
    backends = chosen.args if chosen is not None else getattr(metafunc.module, "BACKENDS", (SINGLE,))
    if "redis_env" not in metafunc.fixturenames or metafunc.definition.get_closest_marker("single_only"):
        return
    if tuple(backends) == (SINGLE,):
        return
    known = metafunc.definition.get_closest_marker("cluster_xfail")
    marks = [pytest.mark.cluster]
    if known is not None:
        marks.append(pytest.mark.xfail(strict=True, reason=known.args[0]))
    params = [pytest.param(name, marks=marks) if name == CLUSTER else name for name in backends]
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """`single` or `cluster`: where `redis_env` points the settings (see `BACKENDS`)."""
    return str(getattr(request, "param", SINGLE))


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`settings_env(NAME="value", ...)` sets variables and rebuilds the process settings.

    The variables are restored by monkeypatch; the settings are rebuilt from the restored
    environment on their next use.
    """

    def apply(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        reset_settings()

    yield apply
    reset_settings()


@pytest.fixture(scope="session")
def primary_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(PRIMARY_CONF, tmp_path_factory.mktemp("redis-primary")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cache_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(CACHE_CONF, tmp_path_factory.mktemp("redis-cache")).start()
    yield server
    server.stop()


def _ensure_running(server: RedisServer) -> None:
    """A test that killed the shared server must not break the next one."""
    if not server.running:
        server.start()


@pytest.fixture
def redis_env(request: pytest.FixtureRequest, backend: str) -> Iterator[dict[str, str]]:
    """Point the settings at the flushed test servers, or at the flushed cluster."""
    if backend == CLUSTER:
        yield request.getfixturevalue("cluster_env")
        return
    yield request.getfixturevalue("single_env")


@pytest.fixture
def single_env(
    monkeypatch: pytest.MonkeyPatch, primary_server: RedisServer, cache_server: RedisServer
) -> Iterator[dict[str, str]]:
    """Point the settings (REDIS_URL, CACHE_REDIS_URL, ...) at the test servers, flushed."""
    _ensure_running(primary_server)
    _ensure_running(cache_server)
    env = {"REDIS_URL": primary_server.url, "CACHE_REDIS_URL": cache_server.url}
    for name in ("REDIS_PASSWORD", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for server in (primary_server, cache_server):
        client = server.client()
        client.flushall()
        client.close()
    reset_settings()
    connections.reset_clients()
    yield env
    reset_settings()
    connections.reset_clients()


@pytest.fixture
def primary(redis_env: dict[str, str]) -> redis.Redis:
    """The settings-built PRIMARY client on a flushed test server."""
    return connections.primary()


@pytest.fixture
def cache_redis(redis_env: dict[str, str]) -> redis.Redis:
    """The settings-built CACHE client on a flushed test server."""
    return connections.cache_redis()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Private redis-servers for tests that kill, fill or reconfigure them."""
    started: list[RedisServer] = []

    def start(config: Path = PRIMARY_CONF, *extra_args: str, name: str = "redis") -> RedisServer:
        server = RedisServer(config, tmp_path / f"{name}-{len(started)}", extra_args=list(extra_args))
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    """In-memory Redis for pure unit tests that run no Lua and need no real server."""
    return fakeredis.FakeRedis()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A private PostgreSQL database for this test session (None when no server answers).

    Private, so concurrent test sessions on one server never drop each other's tables.
    """
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    try:
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = f"kx_test_{uuid.uuid4().hex[:12]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:
        yield None
        return
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The platform schema on SQLite and, where reachable, PostgreSQL; empty for each test.

    CI sets KRYONIX_REQUIRE_POSTGRES=1 so a missing PostgreSQL fails instead of skipping.
    """
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kryonix.db'}"
    else:
        pg_url = request.getfixturevalue("postgres_url")
        if pg_url is None:
            if os.environ.get("KRYONIX_REQUIRE_POSTGRES") == "1":
                pytest.fail(f"PostgreSQL required but unreachable at {POSTGRES_URL}")
            pytest.skip(f"PostgreSQL unreachable at {POSTGRES_URL}")
        url = pg_url
    engine = make_engine(url)
    drop_schema(engine)
    create_schema(engine)
    yield engine
    drop_schema(engine)
    engine.dispose()
