"""Log set-up for every process: text, or one JSON object per line with `LOG_FORMAT=json`."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from cache.settings import get_settings

# Attributes every LogRecord has; anything else was passed in `extra=` and is worth keeping.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


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


def configure_logging(level: int = logging.INFO, *, force: bool = False) -> None:
    """Give the `kryonix` loggers (and RQ's, in JSON mode) one stderr handler in the configured format."""
    root = logging.getLogger("kryonix")
    if root.handlers and not force:
        return
    handler = logging.StreamHandler(sys.stderr)
    if get_settings().log_format == "json":
        handler.setFormatter(JsonFormatter())
        for name in ("rq.worker", "rq.job", "rq.scheduler", "rq_scheduler.scheduler"):
            rq_logger = logging.getLogger(name)
            rq_logger.handlers = [handler]
            rq_logger.propagate = False
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(level)
    root.propagate = False
