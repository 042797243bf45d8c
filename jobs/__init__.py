"""KRYONIX job functions and the typed enqueue API the web tier calls. Imports `cache`, never `workers`.

Importing this package (as every `workers` module does first) fixes RQ's key prefix for
the process: RQ reads `RQ_KEY_PREFIX` once, when `rq` is first imported, so it must be
in the environment before that. On a Redis Cluster (`REDIS_CLUSTER_NODES` set) every RQ
key must share one hash slot: the prefix becomes `{rq}` unless the operator chose
another hash-tagged one. On one server or Sentinel RQ's own default (`rq`) stays.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from cache.errors import ConfigError

CLUSTER_KEY_PREFIX = "{rq}"  # every RQ key in the one slot of the hash tag `rq`


def rq_key_prefix(environ: MutableMapping[str, str]) -> str | None:
    """The prefix this process must give RQ: None to leave RQ's default; sets it in `environ`.

    Raises:
        ConfigError: on a cluster, `RQ_KEY_PREFIX` was set to a prefix without a hash tag.
    """
    given = environ.get("RQ_KEY_PREFIX", "").strip()
    if not environ.get("REDIS_CLUSTER_NODES", "").strip():
        return given or None
    if not given:
        environ["RQ_KEY_PREFIX"] = given = CLUSTER_KEY_PREFIX
    start = given.find("{")
    if start < 0 or given.find("}", start) <= start + 1:
        raise ConfigError(
            f"RQ_KEY_PREFIX={given!r} has no hash tag: on a Redis Cluster (REDIS_CLUSTER_NODES) RQ's "
            f"keys must share one slot; leave it unset (it becomes {CLUSTER_KEY_PREFIX}) or use one like it"
        )
    return given


def _apply_rq_key_prefix() -> None:
    """Set the prefix before `rq` is imported; fail loudly if it was imported with another."""
    wanted = rq_key_prefix(os.environ)
    defaults = sys.modules.get("rq.defaults")
    loaded = getattr(defaults, "RQ_KEY_PREFIX", None)
    if loaded is not None and loaded != (wanted or "rq"):
        raise ConfigError(
            f"rq was imported with RQ_KEY_PREFIX={loaded!r} before this process set {wanted or 'rq'!r}: "
            f"export RQ_KEY_PREFIX={wanted or 'rq'} for `rq` commands run by hand (see docs/jobs.md)"
        )


_apply_rq_key_prefix()
