"""A local SMTP catcher (aiosmtpd) that stores every accepted message as a `.eml` file.

`make run` uses it as the mail server; tests and benchmarks use it as a sink.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class EmlHandler:
    """Accept every message and write it to `directory/<time>-<n>.eml`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            number = next(self._counter)
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{number:06d}.eml"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(envelope.original_content or envelope.content)
        tmp.rename(self.directory / name)  # readers never see a half-written message
        return "250 Message accepted for delivery"


def start_mail_catcher(directory: Path, host: str = "127.0.0.1", port: int = 1025) -> Controller:
    controller = Controller(EmlHandler(directory), hostname=host, port=port)
    controller.start()
    return controller
