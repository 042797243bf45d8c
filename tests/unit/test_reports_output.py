"""Atomic report files: complete or absent, never partial; stale temporaries removed (marker `reports`)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from jobs.reports.output import (
    AtomicReportFile,
    InvalidReportId,
    check_report_id,
    is_temp_of,
    remove_stale_temp_files,
    temp_name,
)

pytestmark = pytest.mark.reports


@pytest.fixture(params=[True, False], ids=["anonymous", "named-temp"])
def anonymous(request: pytest.FixtureRequest) -> bool:
    """Both paths: O_TMPFILE (Linux) and the hidden-name fallback used elsewhere."""
    return bool(request.param)


def test_commit_makes_the_complete_file_visible(tmp_path: Path, anonymous: bool) -> None:
    directory = tmp_path / "reports"
    with AtomicReportFile(directory, "r1", "csv", anonymous=anonymous) as out:
        out.write(b"a,b\r\n")
        out.write(b"1,2\r\n")
        assert list(directory.iterdir()) == [] or all(p.name.startswith(".") for p in directory.iterdir()), (
            "nothing visible before commit"
        )
        path = out.commit()
    assert path == directory / "r1.csv"
    assert os.listdir(directory) == ["r1.csv"], "no temporary file left"
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"
    assert out.size == 10 and out.sha256 == hashlib.sha256(b"a,b\r\n1,2\r\n").hexdigest()
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0, "reports are not world-readable"


def test_commit_replaces_an_older_file_of_the_same_report(tmp_path: Path, anonymous: bool) -> None:
    (tmp_path / "r1.csv").write_bytes(b"old")
    with AtomicReportFile(tmp_path, "r1", "csv", anonymous=anonymous) as out:
        out.write(b"new")
        out.commit()
    assert (tmp_path / "r1.csv").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["r1.csv"]


def test_an_exception_leaves_nothing_behind(tmp_path: Path, anonymous: bool) -> None:
    with (
        pytest.raises(RuntimeError, match="query failed"),
        AtomicReportFile(tmp_path, "r2", "jsonl", anonymous=anonymous) as out,
    ):
        out.write(b'{"a": 1}\n' * 1000)
        raise RuntimeError("query failed")
    assert os.listdir(tmp_path) == []


def test_anonymous_file_has_no_name_while_written(tmp_path: Path) -> None:
    with AtomicReportFile(tmp_path, "r3", "csv") as out:
        out.write(b"x" * 100_000)
        assert os.listdir(tmp_path) == [], "an O_TMPFILE file is in no directory listing"
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_of_only_this_report_are_removed(tmp_path: Path) -> None:
    names = [
        temp_name("r1", 123),
        temp_name("r1", 456),
        temp_name("r1.b", 7),
        ".r10.1.tmp",
        "r1.csv",
        ".r1.x.tmp",
    ]
    for name in names:
        (tmp_path / name).write_text("partial")
    removed = remove_stale_temp_files(tmp_path, "r1")
    assert sorted(removed) == [".r1.123.tmp", ".r1.456.tmp"]
    assert sorted(os.listdir(tmp_path)) == sorted([".r1.b.7.tmp", ".r10.1.tmp", "r1.csv", ".r1.x.tmp"])
    assert remove_stale_temp_files(tmp_path / "missing", "r1") == []


@pytest.mark.parametrize(
    ("name", "report_id", "expected"),
    [
        (".r1.42.tmp", "r1", True),
        (".r1.42.tmp", "r", False),
        (".r1.b.42.tmp", "r1", False),
        ("r1.42.tmp", "r1", False),
        (".r1..tmp", "r1", False),
        (".r1.42.tmp.csv", "r1", False),
    ],
)
def test_is_temp_of(name: str, report_id: str, expected: bool) -> None:
    assert is_temp_of(name, report_id) is expected


@pytest.mark.parametrize("bad", ["", ".hidden", "../etc/passwd", "a/b", "a b", "x" * 129, "é"])
def test_report_ids_are_safe_file_names(bad: str) -> None:
    with pytest.raises(InvalidReportId, match="must be 1-128 letters, digits"):
        check_report_id(bad)
    assert check_report_id("report-0123abcd_v1.2") == "report-0123abcd_v1.2"
