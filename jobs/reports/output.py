"""Report files that appear whole or not at all.

A report is written into an anonymous file (Linux `O_TMPFILE`): it has no name until it
is complete, so no reader can see it, and if the work horse is SIGKILLed (RQ's stop
command, a dead worker) the kernel frees it with the process. When complete it is
linked under a hidden temporary name and renamed over `<report_id>.<ext>` (atomic).

Where `O_TMPFILE` is missing (another OS, a filesystem without it) the file is written
under the hidden name `.<report_id>.<pid>.tmp` instead: removed on any exception, and
removed by the next run of the same report if the process was killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path
from types import TracebackType

from jobs.errors import JobError

log = logging.getLogger(__name__)

# fullmatch, never `$` (which accepts a trailing newline): no '/', never hidden
REPORT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
FILE_MODE = 0o640  # reports hold personal data (emails): not world-readable
DIR_MODE = 0o750
_TEMP_SUFFIX = ".tmp"


class InvalidReportId(JobError, ValueError):
    """A report id that is not safe as a file name."""


def check_report_id(report_id: str) -> str:
    """Raises InvalidReportId unless `report_id` is safe as a file name."""
    if not isinstance(report_id, str) or not REPORT_ID_PATTERN.fullmatch(report_id):
        raise InvalidReportId(
            f"report id {report_id!r} must be 1-128 letters, digits or '_.-', starting with a letter or digit"
        )
    return report_id


def report_path(directory: Path, report_id: str, extension: str) -> Path:
    return directory / f"{check_report_id(report_id)}.{extension}"


def temp_name(report_id: str, pid: int) -> str:
    """Hidden (leading dot) so directory listings and globs like `*.csv` skip it."""
    return f".{report_id}.{pid}{_TEMP_SUFFIX}"


def is_temp_of(name: str, report_id: str) -> bool:
    """Exactly `.<report_id>.<digits>.tmp`: report `a` never matches the temp files of report `a.b`."""
    prefix = f".{report_id}."
    if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):
        return False
    return name[len(prefix) : -len(_TEMP_SUFFIX)].isdigit()


def remove_stale_temp_files(directory: Path, report_id: str) -> list[str]:
    """Delete temporary files a killed earlier run of `report_id` left; returns their names.

    Safe because one report id runs in one work horse at a time (a horse dies with its
    worker, and a job is retried only after that).
    """
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if is_temp_of(name, report_id):
            try:
                os.unlink(directory / name)
                removed.append(name)
            except FileNotFoundError:
                pass
    if removed:
        log.info("report %s: removed stale temporary file(s) %s", report_id, removed)
    return removed


class AtomicReportFile:
    """Bytes in, a complete `<report_id>.<ext>` out; SHA-256 and size tracked as written.

    Use as a context manager; call `commit()` when complete. Leaving the block without
    commit (any exception) leaves nothing behind.
    """

    def __init__(self, directory: Path, report_id: str, extension: str, *, anonymous: bool = True) -> None:
        self.directory = directory
        self.final_path = report_path(directory, report_id, extension)
        self.report_id = report_id
        self.size = 0
        self._hash = hashlib.sha256()
        self._fd = -1
        self._dir_fd = -1
        self._named_temp: str | None = None  # set in the fallback, or once linked
        self._anonymous = anonymous
        self._committed = False

    def __enter__(self) -> AtomicReportFile:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fd = self._open_anonymous() if self._anonymous else -1
            if self._fd < 0:
                self._named_temp = temp_name(self.report_id, os.getpid())
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                self._fd = os.open(self._named_temp, flags, FILE_MODE, dir_fd=self._dir_fd)
        except BaseException:
            os.close(self._dir_fd)
            raise
        return self

    def _open_anonymous(self) -> int:
        flag = getattr(os, "O_TMPFILE", 0)
        if not flag:
            return -1
        try:
            return os.open(self.directory, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        except OSError as exc:  # EOPNOTSUPP/EISDIR/EINVAL: this filesystem has no O_TMPFILE
            log.debug("O_TMPFILE unavailable in %s (%s): using a hidden temporary name", self.directory, exc)
            return -1

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> Path:
        """Make the file visible, complete, under its final name (replacing an older one)."""
        os.fsync(self._fd)
        if self._named_temp is None:
            self._named_temp = temp_name(self.report_id, os.getpid())
            # Linking /proc/self/fd/N names the anonymous file; dir fds make os.link use linkat.
            os.link(
                f"/proc/self/fd/{self._fd}",
                self._named_temp,
                src_dir_fd=self._dir_fd,
                dst_dir_fd=self._dir_fd,
                follow_symlinks=True,
            )
        os.replace(self._named_temp, self.final_path.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        self._named_temp = None
        os.fsync(self._dir_fd)  # the rename itself survives a power loss
        self._committed = True
        return self.final_path

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._fd >= 0:
                os.close(self._fd)
            if not self._committed and self._named_temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._named_temp, dir_fd=self._dir_fd)
        finally:
            os.close(self._dir_fd)
