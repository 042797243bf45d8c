"""KryonixWorker's checks of RQ's constructor arguments: kept, or refused by name.

RQ's Worker takes a job class, queue class, serializer and heartbeat interval. Ours
runs only its own classes and JSON, and a heartbeat short enough for its crash
recovery: anything else raises here, naming the argument, instead of being replaced
without a word.
"""

from __future__ import annotations

import json
from typing import Any

from rq.defaults import DEFAULT_JOB_MONITORING_INTERVAL, DEFAULT_SERIALIZER_CLASS
from rq.serializers import JSONSerializer as RQJSONSerializer
from rq.utils import import_attribute

from cache.errors import ConfigError
from jobs.serialization import JSONSerializer

# What `rq worker` passes as `serializer` when `-S` is not given (so: no choice made);
# `python -m workers worker` refuses it when it is given explicitly.
_UNCHOSEN_SERIALIZERS = (None, DEFAULT_SERIALIZER_CLASS)
# Serializers whose wire format is JSON, by name: ours, RQ's, the standard library's module.
_JSON_SERIALIZER_NAMES = ("json", "jobs.serialization.JSONSerializer", "rq.serializers.JSONSerializer")
_JSON_SERIALIZERS = (JSONSerializer, RQJSONSerializer, json)


def _dotted(value: Any) -> str:
    if isinstance(value, str):
        return value
    qualname = getattr(value, "__qualname__", None) or repr(value)
    return f"{getattr(value, '__module__', '?')}.{qualname}"


def our_class(given: Any, ours: type[Any], *, argument: str) -> type[Any]:
    """`given` (a class or its dotted name) if it is `ours` or a subclass; `ours` for None.

    Raises:
        ConfigError: any other class: ours carry the JSON-only, allow-listed behaviour.
    """
    if given is None:
        return ours
    cls = import_attribute(given) if isinstance(given, str) else given
    if isinstance(cls, type) and issubclass(cls, ours):
        return cls
    raise ConfigError(
        f"KryonixWorker({argument}={_dotted(given)!r}) refused: it runs only "
        f"{_dotted(ours)} or a subclass (JSON only, allow-listed functions)"
    )


def refuse_non_json(given: Any) -> None:
    """Accept no choice or a JSON serializer (ours, RQ's, `json`); the worker then uses ours.

    Raises:
        ConfigError: any other serializer (pickle above all: loading it runs code).
    """
    if given in _UNCHOSEN_SERIALIZERS or given in _JSON_SERIALIZER_NAMES:
        return
    if any(given is serializer for serializer in _JSON_SERIALIZERS):
        return
    raise ConfigError(f"KryonixWorker(serializer={_dotted(given)!r}) refused: jobs are JSON only")


def monitoring_interval(given: Any, *, longest: float, grace: float) -> float:
    """The job heartbeat interval: `longest` unless a shorter one is asked for.

    RQ's default (which `rq worker` always passes) means no choice. A longer interval
    would let a dead worker's job wait past `longest + grace` before it is recovered.

    Raises:
        ConfigError: not a number within 0 < interval <= `longest`.
    """
    if given is None or given == DEFAULT_JOB_MONITORING_INTERVAL:
        return longest
    if isinstance(given, int | float) and not isinstance(given, bool) and 0 < given <= longest:
        return given
    raise ConfigError(
        f"KryonixWorker(job_monitoring_interval={given!r}) refused: it must be within "
        f"0 < interval <= {longest:g} s, so that a dead worker's job is recovered within "
        f"about {longest + grace:g} s"
    )
