"""The dashboard process loads no pickle: RQ's default serializer becomes our JSON one.

rq-dashboard 0.9 passes its configured serializer to a few calls only; its job page,
delete, requeue and requeue-all handlers, `Worker.all` and every registry use RQ's
default, which is pickle. Whoever can write a job hash could then run code in the
dashboard just by an operator opening a page (or by a cross-site `GET /requeue/<q>`).
Rather than patch each call site (and miss the next one), the dashboard process
replaces the default itself: every `Job`, `Queue`, `Worker` and registry created
without an explicit serializer resolves to `JSONSerializer`, and the `pickle` alias
too. JSON decoding never runs code; a field that is not JSON raises, which RQ turns
into a placeholder (meta) and our views show as "undecodable".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import rq.serializers

from jobs.serialization import JSONSerializer

UNDECODABLE = "undecodable"  # what the dashboard shows for a field that is not JSON


def install_json_only() -> None:
    """Make JSON the only serializer RQ can resolve in this process. Idempotent.

    Only the dashboard process calls this (`workers.dashboard.app.create_app`): workers
    and the web tier pass `JSONSerializer` explicitly and are left untouched.
    """
    import rq_dashboard.web as dashboard_web

    # `resolve_serializer(None)` returns the module global `PickleSerializer`, read at call time.
    rq.serializers.PickleSerializer = JSONSerializer  # type: ignore[assignment]
    rq.serializers.DefaultSerializer = JSONSerializer  # type: ignore[misc,assignment]
    rq.serializers.SERIALIZER_ALIASES["pickle"] = JSONSerializer
    dashboard_web.config.serializer = JSONSerializer


def decoded(read: Callable[[], Any]) -> Any:
    """The value `read()` returns, or UNDECODABLE when the stored bytes are not JSON.

    RQ reads meta, results and job data lazily, each through the serializer; any
    failure there (not JSON, not UTF-8, zlib garbage, an unknown tag) is shown as one
    word instead of failing the whole page.
    """
    try:
        return read()
    except Exception:
        return UNDECODABLE
