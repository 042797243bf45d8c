"""Package faces that import their modules on first use (PEP 562).

`from cache import SessionService` and `from cache.sessions import SessionService`
both work, yet `import cache.settings` loads no service: the foundation and the
services import each other's modules, never each other's packages, so no import circle
can form through an `__init__`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that resolves each name of `exports` from its module, once."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
