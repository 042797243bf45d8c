"""uvicorn serving a test app on a free port, as in production."""

from __future__ import annotations

import sys
from collections.abc import Callable
from subprocess import Popen

import httpx
import pytest

from tests.integration.processes import Processes, log_of
from workers.dev.servers import free_port, wait_for_port


class Served:
    def __init__(self, process: Popen[bytes], port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return log_of(self.process)


@pytest.fixture
def uvicorn_app(processes: Processes) -> Callable[..., Served]:
    """`uvicorn_app("tests.integration.starlette_app:app", VAR="value")` -> a served app."""

    def serve(target: str, *options: str, **env: str) -> Served:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--port",
            str(port),
            "--no-access-log",
            "--no-proxy-headers",
            *options,
        ]
        process = processes.start(*command, name="uvicorn", **env)
        try:
            wait_for_port(port, timeout_s=30)
        except TimeoutError:
            pytest.fail(f"uvicorn did not start:\n{log_of(process)}")
        return Served(process, port)

    return serve
