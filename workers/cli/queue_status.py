"""Per-queue and per-worker facts for `status` and `job ID`."""

from __future__ import annotations

import time
from typing import Any

import redis
from rq.utils import utcparse
from rq.worker import Worker

from cache.text import as_text
from jobs.quarantine import list_quarantined, raw_ids
from jobs.queues import QUEUES, KryonixQueue
from workers.job import KryonixJob
from workers.worker import CLASS_FIELD


def queue_facts(client: redis.Redis) -> dict[str, Any]:
    """Depth, oldest queued job age and registry counts for each queue."""
    facts: dict[str, Any] = {}
    for name in QUEUES:
        queue = KryonixQueue(name, connection=client, job_class=KryonixJob)
        oldest_age = None
        first = client.lindex(queue.key, 0)
        if first is not None:
            job_id = as_text(first, errors="backslashreplace")
            enqueued = client.hget(KryonixJob.key_for(job_id), "enqueued_at")
            try:
                enqueued_at = utcparse(as_text(enqueued, errors="backslashreplace")) if enqueued else None
                oldest_age = round(time.time() - enqueued_at.timestamp(), 1) if enqueued_at else None
            except ValueError:  # a hand-written entry: its age is unknown, the queue is still shown
                oldest_age = None
        facts[name] = {
            "queued": queue.count,
            "oldest_queued_age_s": oldest_age,
            "started": queue.started_job_registry.count,
            "scheduled": queue.scheduled_job_registry.count,
            "deferred": queue.deferred_job_registry.count,
            "failed": queue.failed_job_registry.count,
            "finished": queue.finished_job_registry.count,
        }
    return facts


def worker_facts(client: redis.Redis) -> list[dict[str, Any]]:
    """One row per registered worker; a registration RQ cannot read is a row with its `error`."""
    rows = []
    for key in raw_ids(client.smembers(Worker.redis_workers_keys)):
        try:
            worker = Worker.find_by_key(as_text(key, errors="backslashreplace"), connection=client)
        except Exception as exc:  # written by hand: shown, never hiding the other workers
            rows.append(_unreadable_worker(as_text(key, errors="backslashreplace"), exc))
            continue
        if worker is None:
            continue
        worker_class = client.hget(worker.key, CLASS_FIELD)
        rows.append(
            {
                "name": worker.name,
                # None: not a KryonixWorker (e.g. plain `rq worker`: unpickles, runs any function).
                "class": as_text(worker_class, errors="backslashreplace") if worker_class else None,
                "queues": worker.queue_names(),
                "state": str(worker.get_state()),
                "current_job": worker.get_current_job_id(),
                "pid": worker.pid,
                "successful_jobs": worker.successful_job_count,
                "failed_jobs": worker.failed_job_count,
            }
        )
    return sorted(rows, key=lambda row: row["name"])


def _unreadable_worker(key: str, exc: Exception) -> dict[str, Any]:
    return {
        "name": key,
        "class": None,
        "queues": [],
        "state": f"unreadable registration: {type(exc).__name__}: {exc}",
        "current_job": None,
        "pid": None,
        "successful_jobs": 0,
        "failed_jobs": 0,
    }


def render_queues(section: dict[str, Any]) -> list[str]:
    lines = []
    for name, q in section["queues"].items():
        age = "-" if q["oldest_queued_age_s"] is None else f"{q['oldest_queued_age_s']:.0f} s"
        lines.append(
            f"{name}: {q['queued']} queued (oldest {age}), {q['started']} started, "
            f"{q['scheduled']} scheduled, {q['deferred']} deferred, {q['failed']} failed, "
            f"{q['finished']} finished"
        )
    workers = section["workers"]
    lines.append(f"{len(workers)} live worker(s)")
    for w in workers:
        current = f" running {w['current_job']}" if w["current_job"] else ""
        lines.append(f"  {w['name']} [{','.join(w['queues'])}] {w['state']}{current}")
    for name in section["unsafe_workers"]:
        lines.append(
            f"  WARNING: worker {name} is not a KryonixWorker: it may unpickle and run any function "
            "(start workers with `python -m workers worker`)"
        )
    lines.append(f"{section['quarantined']} quarantined entr{'y' if section['quarantined'] == 1 else 'ies'}")
    lines.extend(
        f"  {q['queue']} {q['id']!r}: {q['reason']}" for q in section["quarantine"][:QUARANTINE_SHOWN]
    )
    return lines


QUARANTINE_SHOWN = 20  # newest entries listed in the text; `failed list` shows them all


def section(client: redis.Redis) -> dict[str, Any]:
    """Queues, live workers (those of another class named in `unsafe_workers`) and the quarantine."""
    workers = worker_facts(client)
    ours = set(QUEUES)
    unsafe = [w["name"] for w in workers if w["class"] is None and ours & set(w["queues"])]
    quarantined = [entry.as_dict() for entry in list_quarantined(client)]
    data = {
        "queues": queue_facts(client),
        "workers": workers,
        "unsafe_workers": unsafe,
        "quarantined": len(quarantined),
        "quarantine": quarantined,
    }
    return {**data, "_text": render_queues(data)}
