"""The layout's rules, checked from the source: faces resolve, the foundation imports no
service, modules and functions stay small enough to read whole."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cache", "jobs", "workers")
FACES = ("cache", "cache.appcache", "cache.sessions", "cache.ratelimit", "cache.realtime")
SERVICES = ("cache.appcache", "cache.sessions", "cache.ratelimit", "cache.realtime")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("face", FACES)
def test_every_name_a_package_face_exports_resolves(face: str) -> None:
    package = importlib.import_module(face)
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == [], f"{face} exports names it cannot resolve: {missing}"


def test_the_foundation_imports_no_service_and_cache_imports_no_upper_layer() -> None:
    offenders = []
    for path in sorted((ROOT / "cache").glob("*.py")):
        if path.name == "__init__.py":  # the face names the services; it loads them lazily
            continue
        for module in _imported_modules(path):
            if module.startswith(("jobs", "workers")) or module.startswith(SERVICES):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    for path in sorted((ROOT / "cache").rglob("*.py")):
        offenders += [
            f"{path.relative_to(ROOT)} imports {m}"
            for m in _imported_modules(path)
            if m.startswith(("jobs", "workers"))
        ]
    assert offenders == []


def test_no_module_or_function_is_too_long_to_read_whole() -> None:
    too_long = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT)
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []


SERVICE_CLASSES = (
    "cache.appcache.CacheService",
    "cache.appcache.AsyncCacheService",
    "cache.sessions.SessionService",
    "cache.sessions.AsyncSessionService",
    "cache.ratelimit.RateLimiter",
    "cache.ratelimit.AsyncRateLimiter",
    "cache.realtime.RealtimeService",
    "cache.realtime.AsyncRealtimeService",
    "cache.realtime.Subscriber",
    "cache.realtime.AsyncSubscriber",
)


@pytest.mark.parametrize("dotted", SERVICE_CLASSES)
def test_every_service_takes_the_client_first_and_the_rest_by_keyword(dotted: str) -> None:
    import inspect

    module, _, name = dotted.rpartition(".")
    parameters = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters.values())
    assert parameters[0].name == "client", f"{dotted}: first parameter is {parameters[0].name!r}"
    positional = [p.name for p in parameters[1:] if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert positional == [], f"{dotted}: {positional} may be passed by position"
