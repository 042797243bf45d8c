"""Every multi-key operation of the project, once, against REDIS_URL (run by test_slots_recorded).

Run as `python -m tests.integration.slot_driver` with `RQ_KEY_PREFIX={rq}`, as on a
Cluster, while the test records what the server receives (MONITOR). Ids and keys carry
braces on purpose: a `{` or `}` in caller-given text must not move a key to another slot.
"""

from __future__ import annotations

import asyncio
import time

from cache import connections
from cache.appcache.async_service import AsyncCacheService
from cache.appcache.service import CacheService
from cache.connections import Role
from cache.ratelimit.async_service import AsyncRateLimiter
from cache.ratelimit.service import RateLimiter
from cache.realtime.service import RealtimeService
from cache.sessions.async_service import AsyncSessionService
from cache.sessions.service import SessionService
from jobs.email import idempotency
from jobs.enqueue import enqueue, enqueue_bulk
from jobs.errors import EnqueueNotDurable
from jobs.quarantine import QUARANTINE_KEY
from jobs.queues import KryonixQueue
from workers.job import KryonixJob
from workers.maintenance import STUCK_AFTER_S, recover
from workers.worker import KryonixWorker

NOOP = "jobs.diagnostics.noop"
ODD_USER = "u}{1"  # braces in caller-given text


def sessions() -> None:
    service = SessionService(connections.primary())
    sid = service.create(ODD_USER, {"a": 1}, idp_sid="}kc-1", idp_sub="{sub-a}")
    service.get(sid)
    service.refresh(sid)
    service.update(sid, {"b": 2}, remove=["a"])
    rotated = service.rotate(sid, changes={"role": "admin"})
    service.list_for_user(ODD_USER)
    service.destroy(rotated)
    service.create(ODD_USER, idp_sid="}kc-1")
    service.logout_by_idp_session("}kc-1")
    service.create(ODD_USER, idp_sub="{sub-a}")
    service.logout_by_subject("{sub-a}")
    service.create(ODD_USER)
    service.destroy_all_for_user(ODD_USER)


async def async_services() -> None:
    client = connections.build_async_client(Role.PRIMARY)
    service = AsyncSessionService(client)
    sid = await service.create(ODD_USER, idp_sid="}kc-2")
    rotated = await service.rotate(sid)
    await service.list_for_user(ODD_USER)
    await service.destroy(rotated)
    await service.create(ODD_USER)
    await service.destroy_all_for_user(ODD_USER)
    cache = AsyncCacheService(client, namespace="async-ns")
    await cache.get_or_set("k}1", lambda: {"v": 1})
    await cache.set("k2", 2)
    await cache.delete_many(["k}1", "k2"])
    await cache.clear()
    await AsyncRateLimiter(client).check("{203.0.113.9}", 10, 60)
    await client.aclose()


def email() -> None:
    client = connections.primary()
    for key in ("}starts-with-a-brace", "mid}dle{", "plain-1"):
        idempotency.begin_send(client, idempotency_key=key, attempt={"job_id": "j", "pid": 1})
        idempotency.mark_sent(client, idempotency_key=key, record={"possible_duplicate": True})
        idempotency.begin_send(client, idempotency_key=key, attempt={"job_id": "j2", "pid": 2})
    idempotency.begin_send(client, idempotency_key="refused-1", attempt={"job_id": "j", "pid": 1})
    idempotency.release_claim(client, idempotency_key="refused-1", earlier={"job_id": "old"})


def cache_and_friends() -> None:
    client = connections.primary()
    cache = CacheService(client, namespace="ns")
    cache.get_or_set("user:}42", lambda: {"name": "ana"})
    cache.set("user:43", {"name": "bo"})
    cache.get("user:43")
    try:
        cache.get_or_set("boom", _raise)  # the fill lease is released
    except RuntimeError:
        pass
    cache.delete_many(["user:}42", "user:43"])
    cache.clear()
    RateLimiter(client).limit_by_ip("203.0.113.7")
    RateLimiter(client).check("{odd}", 5, 60)
    RealtimeService(client).publish_user_event("u1", "report.ready", {"id": 1})
    RealtimeService(client).publish_system_event("deploy", {"v": 2})


def _raise() -> object:
    raise RuntimeError("the fetcher failed")


def queues() -> None:
    client = connections.primary()
    enqueue("email", NOOP)
    enqueue("email", NOOP, idempotency_key="once}{")
    enqueue("email", NOOP, idempotency_key="once}{")  # a duplicate
    enqueue("email", NOOP, in_=3600)
    enqueue("email", NOOP, in_=3600, idempotency_key="later")
    try:
        enqueue("email", NOOP, durable=True)  # no replica here: not durable
    except EnqueueNotDurable:
        pass
    enqueue_bulk("email", NOOP, [((), {}), ((), {})])
    report = KryonixQueue("report", connection=client, job_class=KryonixJob)
    stranded = enqueue("report", NOOP)
    client.lmove(report.key, report.intermediate_queue_key)  # as if its worker died after BLMOVE
    client.rpush(report.intermediate_queue_key, b"not a job id")  # poison: quarantined
    now = time.time()
    recover(client, now=now)
    recover(client, now=now + STUCK_AFTER_S + 1)  # the stranded job goes back in one MULTI
    assert stranded in [job.id for job in report.get_jobs()]
    email_queue = KryonixQueue("email", connection=client, job_class=KryonixJob)
    client.rpush(email_queue.key, b"../bad")  # poison met by the worker: quarantined
    KryonixWorker([email_queue], connection=client).work(burst=True, logging_level="ERROR")
    KryonixWorker([report], connection=client).work(burst=True, logging_level="ERROR")
    assert client.hlen(QUARANTINE_KEY) == 2, "both poison entries set aside"


def main() -> None:
    sessions()
    asyncio.run(async_services())
    email()
    cache_and_friends()
    queues()


if __name__ == "__main__":
    main()
