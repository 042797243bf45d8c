"""JSON on the wire instead of pickle, for every enqueue and every worker.

Pickle lets whoever can write to Redis run code in a worker; JSON cannot. Types JSON
lacks round-trip as tagged objects, so a job sees exactly what the caller passed:

| Python            | on the wire                                     |
|-------------------|-------------------------------------------------|
| `datetime`        | `{"__kx__": "datetime", "v": "<ISO-8601>"}` (naive stays naive) |
| `date`            | `{"__kx__": "date", "v": "YYYY-MM-DD"}`          |
| `UUID`            | `{"__kx__": "uuid", "v": "<hex with dashes>"}`   |
| `Decimal`         | `{"__kx__": "decimal", "v": "<exact string>"}`   |
| `tuple`           | a JSON array: a job receives a `list`            |

Dictionary keys become strings, as in JSON (`{1: x}` arrives as `{"1": x}`); NaN and
infinities are refused. Anything else is
refused at enqueue with `UnserializableArgument` naming the value's type.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from uuid import UUID

from jobs.errors import JobError

TAG = "__kx__"


class UnserializableArgument(JobError, TypeError):
    """A job argument has no JSON form; raised before anything reaches Redis."""


def _encode(value: Any) -> dict[str, str]:
    if isinstance(value, dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise UnserializableArgument(f"Decimal {value} is not finite; only finite decimals can be sent")
        return {TAG: "decimal", "v": str(value)}
    raise UnserializableArgument(
        f"a value of type {type(value).__module__}.{type(value).__qualname__} cannot be sent to a job "
        "(JSON types, datetime, date, UUID and Decimal only)"
    )


_DECODERS: dict[str, Callable[[str], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "uuid": UUID,
    "decimal": Decimal,
}


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 2 and TAG in obj and "v" in obj:
        decoder = _DECODERS.get(obj[TAG])
        if decoder is not None:
            return decoder(obj["v"])
    return obj


_encoder = json.JSONEncoder(default=_encode, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
_decoder = json.JSONDecoder(object_hook=_decode)


def dumps(obj: Any) -> bytes:
    """Encode for Redis.

    Raises:
        UnserializableArgument: a value has no JSON form.
    """
    try:
        return _encoder.encode(obj).encode()
    except UnserializableArgument:
        raise
    except (TypeError, ValueError) as exc:  # non-str dict keys, NaN, circular references
        raise UnserializableArgument(f"cannot be sent to a job: {exc}") from None


def loads(data: bytes | str) -> Any:
    return _decoder.decode(data.decode() if isinstance(data, bytes) else data)


class JSONSerializer:
    """The serializer RQ is given everywhere (`dumps`/`loads` as RQ's Serializer protocol)."""

    dumps = staticmethod(dumps)
    loads = staticmethod(loads)
