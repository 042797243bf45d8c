"""Which functions a job may name: only functions defined in a `jobs.*` module.

A job is data in Redis; anyone who can write there could name `os.system` or
`builtins.eval`. The worker resolves a job's function only through `resolve()`,
which refuses anything outside `jobs.` before importing anything.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from jobs.errors import JobValidationError

ALLOWED_PACKAGE = "jobs"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")  # used with fullmatch


class JobNotAllowed(JobValidationError):
    """A job names a function outside the allow-list; it must not run."""


def _check_name(name: str) -> tuple[str, str]:
    if not isinstance(name, str) or not _DOTTED.fullmatch(name):
        raise JobNotAllowed(f"job function {name!r} is not a dotted name like 'jobs.email.send_email'")
    module, _, attribute = name.rpartition(".")
    if module != ALLOWED_PACKAGE and not module.startswith(ALLOWED_PACKAGE + "."):
        raise JobNotAllowed(f"job function {name!r} is not on the allow-list (functions under 'jobs.' only)")
    if attribute.startswith("_"):
        raise JobNotAllowed(f"job function {name!r} is private; only public functions under 'jobs.' run")
    return module, attribute


def resolve(name: str) -> Callable[..., Any]:
    """The function `name` refers to, if it is a public function defined in a `jobs.*` module.

    Raises:
        JobNotAllowed: outside the allow-list, not a module-level function of that module
            (e.g. `jobs.email.os.system`), or missing.
    """
    module_name, attribute = _check_name(name)
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise JobNotAllowed(f"job function {name!r}: no module {module_name!r} under 'jobs.'") from None
    func = getattr(module, attribute, None)
    # Defined in that very module: `jobs.x.os` or an imported `system` never qualifies.
    if not inspect.isfunction(func) or func.__module__ != module_name:
        raise JobNotAllowed(f"job function {name!r} is not a function defined in {module_name!r}")
    return func


def function_name(func: str | Callable[..., Any]) -> str:
    """The dotted name RQ stores for `func`, checked against the allow-list at enqueue.

    Raises:
        JobValidationError: not allowed, or not resolvable.
    """
    if isinstance(func, str):
        resolve(func)
        return func
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', '')}"
    if resolve(name) is not func:
        raise JobNotAllowed(f"{name!r} does not resolve to the function given")
    return name
