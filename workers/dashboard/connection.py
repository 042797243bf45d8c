"""rq-dashboard on a Redis Cluster PRIMARY: it is handed our cluster client, not a URL.

rq-dashboard 0.9 builds its connection from `RQ_DASHBOARD_REDIS_URL` (redis:// or
redis+sentinel://) in `setup_rq_connection` and again, from the URL, in its blueprint's
`push_rq_connection` before every `/<instance>/...` request; no URL names a cluster. On
a cluster we skip the first and put `use_cluster_client`'s hook in place of the second:
every request gets `jobs.rq_cluster.rq_connection(primary())`, the shared cluster client
as RQ's classes must be given it (RQ's keys are all on the `{rq}` slot). The URL setting
then only labels the one instance on the pages. An option for a connection object in
rq-dashboard itself would be the right home for this.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request

from cache.settings import Cluster


def cluster_label(cluster: Cluster) -> str:
    """What the dashboard shows as its one instance: `redis-cluster://h:p,h:p`."""
    nodes = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in cluster.nodes)
    return f"redis-cluster://{nodes}"


def _push_cluster_connection() -> None:
    """rq-dashboard's `push_rq_connection`, with our client for its one instance."""
    from cache.connections import primary
    from jobs.rq_cluster import rq_connection

    instance = (request.view_args or {}).get("instance_number")
    if instance not in (None, 0):
        raise LookupError("Index exceeds RQ list. Not Permitted.")  # rq-dashboard's own answer
    app: Any = current_app
    app.redis_conn = rq_connection(primary())


def use_cluster_client(app: Flask, cluster: Cluster) -> None:
    """Make `app` (from `make_flask_app`) read the cluster through our client."""
    import rq_dashboard.web as dashboard_web
    from rq_dashboard.legacy_config import upgrade_config

    upgrade_config(app)
    app.config["RQ_DASHBOARD_REDIS_URL"] = (cluster_label(cluster),)
    hooks = app.before_request_funcs.get(dashboard_web.blueprint.name, [])
    if dashboard_web.push_rq_connection not in hooks:
        raise RuntimeError(
            "rq-dashboard no longer registers push_rq_connection: see workers/dashboard/connection.py"
        )
    hooks[hooks.index(dashboard_web.push_rq_connection)] = _push_cluster_connection
