"""Headless Chromium for the dashboard tests: Debian's `chromium`, driven by Playwright.

Playwright's own browser download (`playwright install`) is never used: the browser
is the distribution's package, installed here when missing and we are root (as
`.ci/run` does too). In CI a missing browser fails the run; elsewhere it skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM_PACKAGE = "chromium"


def _apt_install() -> None:
    """`apt-get install -y chromium`, refreshing the package lists once if that fails."""
    command = ["apt-get", "install", "-y", CHROMIUM_PACKAGE]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(command, env=env, check=True, capture_output=True)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The chromium binary, installed with apt when missing and we are root."""
    path = shutil.which("chromium")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        _apt_install()
        path = shutil.which("chromium")
    if path is None:
        reason = "Debian's chromium is not installed (apt-get install -y chromium, as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """One headless Chromium per test module; each test opens its own context.

    Module-scoped: Playwright's sync API keeps an event loop running in the main thread
    while it is open, and code under test that runs its own loop (the SMTP runtime)
    cannot start inside it.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path, args=["--no-sandbox"], headless=True
        )
        yield launched
        launched.close()
