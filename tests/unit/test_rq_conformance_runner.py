"""The RQ conformance runner unpacks only the sdist's tests and lists every exception with a reason."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.rq_conformance.expected import DESELECTED, EXPECTED_FAILURES, TEST_FILES
from tests.rq_conformance.runner import unpack_tests


def _sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_only_the_tests_directory_is_unpacked_and_nothing_escapes(tmp_path: Path) -> None:
    sdist = _sdist(
        tmp_path / "rq-9.tar.gz",
        {
            "rq-9/tests/test_a.py": b"a",
            "rq-9/tests/sub/b.json": b"b",
            "rq-9/rq/worker.py": b"not a test",
            "rq-9/tests/../../escaped.py": b"x",
        },
    )
    root = tmp_path / "root"

    unpack_tests(sdist, root)

    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["tests/sub/b.json", "tests/test_a.py"]
    assert not (tmp_path / "escaped.py").exists()


def test_every_listed_test_has_a_reason_and_lives_in_a_file_that_runs() -> None:
    for node_id, reason in {**EXPECTED_FAILURES, **DESELECTED}.items():
        assert reason.strip(), node_id
        assert node_id.split("::")[0] in TEST_FILES, node_id
