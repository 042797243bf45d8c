"""Download RQ's sdist, unpack its tests, run them on a private redis-server.

The sdist is cached in the system temp dir (`kx-rq-conformance/`), so only the first
run on a machine needs the network (PyPI, through pip). The tests run in a separate
pytest process whose root is the unpacked suite: RQ's `tests` package must not meet
ours, and our pytest settings (warnings as errors) are not RQ's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from rq.version import VERSION

from tests.rq_conformance.expected import DESELECTED, EXPECTED_FAILURES, TEST_FILES
from workers.dev.servers import PRIMARY_CONF, RedisServer

CACHE_DIR = Path(tempfile.gettempdir()) / "kx-rq-conformance"
PER_TEST_TIMEOUT_S = 60
PYTEST_INI = f"""[pytest]
markers =
    slow
    ssl_test
timeout = {PER_TEST_TIMEOUT_S}
"""


def fetch_sdist(version: str = VERSION, cache_dir: Path = CACHE_DIR) -> Path:
    """RQ's sdist for `version`, downloaded with pip on first use."""
    sdist = cache_dir / f"rq-{version}.tar.gz"
    if not sdist.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Into a directory of its own, then renamed: an interrupted download leaves no sdist.
        with tempfile.TemporaryDirectory(prefix="download-", dir=cache_dir) as partial:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", f"rq=={version}", "--no-binary", ":all:",
                 "--no-deps", "--quiet", "-d", partial],
                check=True,
            )  # fmt: skip
            os.replace(Path(partial) / sdist.name, sdist)
    return sdist


def unpack_tests(sdist: Path, destination: Path) -> Path:
    """Extract the sdist's `tests/` (regular files only, no path escapes) into `destination`."""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = PurePosixPath(member.name).parts
            if len(parts) < 3 or parts[1] != "tests" or not member.isfile() or ".." in parts:
                continue
            target = destination.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
    return destination / "tests"


def prepare(root: Path, sdist: Path) -> None:
    """RQ's tests plus our conftest, pytest.ini and the expected-failure list, in `root`."""
    unpack_tests(sdist, root)
    shutil.copyfile(Path(__file__).with_name("rq_conftest.py"), root / "conftest.py")
    (root / "pytest.ini").write_text(PYTEST_INI)
    (root / "expected.json").write_text(json.dumps({"failures": EXPECTED_FAILURES, "deselected": DESELECTED}))


def main(pytest_args: list[str]) -> int:
    """Run the suite; `pytest_args` (e.g. `-k name`, `-x`) go to pytest. Returns its exit code."""
    sdist = fetch_sdist()
    with tempfile.TemporaryDirectory(prefix="run-", dir=CACHE_DIR) as tmp:
        root = Path(tmp)
        prepare(root, sdist)
        shutil.rmtree("/tmp/rq_shutdown", ignore_errors=True)  # RQ's fixed path; a killed run leaves it
        server = RedisServer(PRIMARY_CONF, root / "redis").start()
        try:
            env = {
                **os.environ,
                "KX_RQ_REDIS_PORT": str(server.port),
                "KX_RQ_EXPECTED": str(root / "expected.json"),
                "REDIS_URL": server.url,
                "CACHE_REDIS_URL": server.url,
            }
            for name in ("REDIS_PASSWORD", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "RQ_REDIS_URL"):
                env.pop(name, None)
            command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEX"]
            # Its own session: a test that signals its process group must not reach `make test`.
            code = subprocess.call(
                [*command, *TEST_FILES, *pytest_args], cwd=root, env=env, start_new_session=True
            )
            if code < 0:
                print(f"RQ's test run was killed by signal {-code}", file=sys.stderr)
            return code
        finally:
            server.stop()
