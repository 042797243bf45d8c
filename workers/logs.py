"""Log set-up for every process: text, or one JSON object per line with `LOG_FORMAT=json`.

RQ's loggers get the same handler as ours, so a worker's output has one line format and
one timestamp format (supervisord's own: `2026-01-31 12:00:00,123 INFO ...`). RQ's INFO
lines about each job (completed, OK, result kept) are left out: the worker's own start and
end lines (`workers.job_stats`) say the same in one line each; `--verbose` keeps them all.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from cache.settings import get_settings

# Attributes every LogRecord has; anything else was passed in `extra=` and is worth keeping.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# `rq` covers RQ's modules that log without a handler of their own (rq.queue, rq.cron, ...).
RQ_LOGGERS = ("rq", "rq.worker", "rq.job", "rq.scheduler", "rq_scheduler.scheduler")
# RQ's (and `workers.bookkeeping`'s copy of RQ's) per-job INFO messages, by their templates.
RQ_JOB_MESSAGES = frozenset(
    {
        "Worker %s: %s: %s (%s)",  # dequeued (with the description) and "Job OK"
        "Worker %s: %s: %s",  # dequeued
        "Successfully completed %s job in %ss on worker %s",
        "Successfully completed job %s in %ss on worker %s",
        "Successfully completed %s in %ss on worker %s",
        "Worker %s: job %s result is kept for %s seconds",
        "Worker %s: job %s result discarded immediately",
        "Worker %s: job %s result will never expire, clean up result key manually",
    }
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def without_rq_job_lines(record: logging.LogRecord) -> bool:
    """False for RQ's per-job INFO lines; warnings and errors about a job always pass."""
    return not (record.levelno == logging.INFO and record.msg in RQ_JOB_MESSAGES)


def configure_logging(level: int = logging.INFO, *, force: bool = False) -> None:
    """Give the `kryonix` loggers and RQ's one stderr handler in the configured format."""
    root = logging.getLogger("kryonix")
    if root.handlers and not force:
        return
    handler = logging.StreamHandler(sys.stderr)
    if get_settings().log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    if level > logging.DEBUG:
        handler.addFilter(without_rq_job_lines)
    for name in RQ_LOGGERS:
        rq_logger = logging.getLogger(name)
        rq_logger.handlers = [handler]
        rq_logger.propagate = False
    root.handlers = [handler]
    root.setLevel(level)
    root.propagate = False
