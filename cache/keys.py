"""Every Redis key name this project writes, in one place.

RQ owns its own keys (under `RQ_KEY_PREFIX`); everything of ours starts with `kx:`
(sessions with `session:`) so operators can tell them apart. `{hash tags}` mark keys
that one script or MULTI touches together: on Redis Cluster every such call must touch
one slot (tests/unit/test_cluster_slots.py and tests/integration/test_slots_recorded.py
check it). A tag always comes before any caller-given text, so a `{` or `}` inside
an id can never move a key to another slot.
"""

from __future__ import annotations

PREFIX = "kx"


def cache_namespace_version(namespace: str) -> str:
    return f"{PREFIX}:cache:{{{namespace}}}:version"


def cache_entry(namespace: str, key: str) -> str:
    """A cached value; it carries its namespace generation inside, so `clear()` needs no rename."""
    return f"{PREFIX}:cache:{{{namespace}}}:k:{key}"


def cache_fill_lock(namespace: str, key: str) -> str:
    """The lease of the one caller that fetches `key`; same hash slot as the entry."""
    return f"{PREFIX}:cache:{{{namespace}}}:l:{key}"


def cache_counters() -> str:
    """Hash of cache hit/miss/... counters summed over every process that uses this cache Redis."""
    return f"{PREFIX}:cache:counters"


SESSIONS_TAG = "{sessions}"
"""The one hash tag of every session key: a session, its user's and its IdP indexes are
touched by one script, so on a Cluster all sessions live on one slot (failover, not
sharding; docs/sessions.md says why)."""


def session(session_id: str) -> str:
    """One session hash; the `session:` prefix the web tier expects, then the sessions' tag."""
    return f"session:{SESSIONS_TAG}:{session_id}"


def user_sessions(user_id: str) -> str:
    return f"{PREFIX}:{SESSIONS_TAG}:user:{user_id}"


def idp_session_sessions(idp_sid: str) -> str:
    """The sessions signed in through one IdP session (OIDC `sid`): back-channel logout."""
    return f"{PREFIX}:{SESSIONS_TAG}:idp-sid:{idp_sid}"


def idp_subject_sessions(idp_sub: str) -> str:
    """The sessions of one IdP subject (OIDC `sub`): back-channel logout without a `sid`."""
    return f"{PREFIX}:{SESSIONS_TAG}:idp-sub:{idp_sub}"


def logout_token_jti(digest: str) -> str:
    """Marks a back-channel logout token as used (its issuer and `jti`, hashed) until it expires."""
    return f"{PREFIX}:logout-jti:{digest}"


def rate_limit(scope: str, identifier: str) -> str:
    return f"{PREFIX}:rl:{{{scope}:{identifier}}}"


def rate_limit_log(scope: str, window_ms: int, identifier: str) -> str:
    """The sliding-window log of one identifier under one policy.

    The window is part of the name so that two windows of one scope never trim each
    other's entries; the whole name is the hash tag (one key per script call).
    """
    return rate_limit(f"{scope}:{window_ms}", identifier)


def rate_limit_counters() -> str:
    """Hash `<scope>:<outcome>` -> checks, summed over every process that uses this primary.

    Outside `RATE_LIMIT_SCAN_PATTERN` (`rl-`, not `rl:`): never counted as a client's log.
    """
    return f"{PREFIX}:rl-stats"


RATE_LIMIT_SCAN_PATTERN = f"{PREFIX}:rl:*"
"""`SCAN MATCH` pattern of every rate-limit key (metrics count them per scope)."""


def rate_limit_log_scope(key: str) -> tuple[str, int] | None:
    """`(scope, window_ms)` of a `rate_limit_log` key, None for any other key; its inverse."""
    prefix = f"{PREFIX}:rl:{{"
    if not key.startswith(prefix) or not key.endswith("}"):
        return None
    scope, _, rest = key[len(prefix) : -1].partition(":")
    window, _, identifier = rest.partition(":")
    if not scope or not window.isdigit() or not identifier:
        return None
    return scope, int(window)


def user_channel(user_id: str) -> str:
    return f"user:{user_id}:events"


SYSTEM_CHANNEL = "system:events"


def event_stream(channel: str) -> str:
    return f"{PREFIX}:stream:{channel}"


def event_stream_channel(key: str) -> str | None:
    """The channel whose event stream `key` is (None for any other key); inverse of `event_stream`."""
    prefix = f"{PREFIX}:stream:"
    return key[len(prefix) :] if key.startswith(prefix) else None


def _email_tag(idempotency_key: str) -> str:
    """`{idem:<key>}`: the fixed `idem:` keeps the tag non-empty even for a key starting with `}`."""
    return f"{{idem:{idempotency_key}}}"


def email_sent_marker(idempotency_key: str) -> str:
    """Written in one MULTI with the claim's removal: both carry the key's tag."""
    return f"{PREFIX}:email:{_email_tag(idempotency_key)}:sent"


def email_sending_claim(idempotency_key: str) -> str:
    """Set before an SMTP transaction, removed when its outcome is known (see jobs/email/idempotency.py)."""
    return f"{PREFIX}:email:{_email_tag(idempotency_key)}:sending"


EMAIL_POSSIBLE_DUPLICATES = f"{PREFIX}:email:possible_duplicates"


def email_bulk_info(bulk_id: str) -> str:
    """A bulk email send: template, recipient count, chunk job ids (JSON string)."""
    return f"{PREFIX}:email:bulk:{{{bulk_id}}}:info"


def email_bulk_outcomes(bulk_id: str) -> str:
    """Hash recipient -> outcome of one bulk send; `sent`/`refused` entries are never sent again."""
    return f"{PREFIX}:email:bulk:{{{bulk_id}}}:outcomes"


def job_counters(queue: str) -> str:
    """Hash of totals per queue: finished, failed, retried, stopped, duration buckets and sum."""
    return f"{PREFIX}:stats:jobs:{queue}"


def quarantine(rq_key_prefix: str) -> str:
    """Hash `<queue>/<job id>` -> JSON {queue, id, reason, source, at}: queue entries too
    broken for the failed registry (malformed id, missing or unreadable job hash), set
    aside so no worker meets them again. Shown by `status` and `failed list`.

    Written in one MULTI with the removal from RQ's list or registry, so it carries
    RQ's key prefix (`rq.defaults.RQ_KEY_PREFIX`) and with it RQ's `{rq}` slot.
    """
    return f"{PREFIX}:{rq_key_prefix}:quarantine"


def intermediate_seen(intermediate_key: str) -> str:
    """Hash: job id -> since when maintenance has seen it unregistered in RQ's list `intermediate_key`.

    Its field leaves in the MULTI that requeues the job, so it extends RQ's key (and its slot).
    """
    return f"{intermediate_key}:kx-seen"


def durable_probe(job_key: str) -> str:
    """Written right before a durable enqueue's WAIT, on the connection that sends it.

    WAIT counts replicas that have every write of *its own connection*; this write makes
    that include the job, whichever pooled connection wrote the job. It extends the job's
    key, so on a Cluster it lands on the node that owns the job (jobs/enqueue.py).
    """
    return f"{job_key}:kx-durable"
