"""Email throughput with real worker processes and a local aiosmtpd sink: `python -m bench email`.

Starts its own PRIMARY redis-server (the shipped redis.conf) and an aiosmtpd sink in its
own process that counts messages per recipient (so duplicates are seen). On 2 cores:

- transactional (one email per job, `welcome` template): 2 `rq worker email` processes with
  the README environment, against (a) 2 plain `rq worker` processes (RQ's forking Worker,
  pickle) running `baseline_send`, which builds the message with `EmailMessage` and opens a
  new smtplib connection per email. Queues are filled first, then the workers start; the
  rate is messages / (last delivery - first delivery) as seen by the sink.
- bulk (one `enqueue_bulk_email` to 10,000 recipients, personalised): timed from the call
  (validation and enqueue included) to the 10,000th delivery, with 2 email workers idle and
  waiting; against (b) the ceiling: raw aiosmtplib over 8 connections in one process, no
  queue, sending 10,000 messages rendered before the clock starts.

Options: `--bulk N` recipients (default 10,000), `--smtp-delay-ms D` (default 0): the sink
holds each DATA answer D ms, as a remote relay would, and the ceiling then opens as many
connections as the 2 workers may (2 x SMTP_MAX_CONNECTIONS); `--rounds R` (default 3);
`--chunk-size N` (default: `enqueue_bulk_email`'s choice); `--bulk-only` skips the
transactional workload.

Counts are chosen to keep the run under ~3 minutes on 2 cores; every wait is bounded.
This module's top level imports only the standard library: the baseline's forked work
horses import it for every job.
"""

from __future__ import annotations

import smtplib
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from bench.common import spawn_logged, stop_process_groups, worker_env

TRANSACTIONAL = 2_000
BASELINE = 300  # the forking worker is ~10x slower: fewer messages keep the run short
BULK = 10_000
CEILING_CONNECTIONS = 8
WORKERS = 2
ROUNDS = 3  # interleaved; the median of each side is reported
WAIT_S = 120.0  # the longest any phase may take before it is reported as timed out
TARGET_TRANSACTIONAL = 6.0
TARGET_BULK = 0.6
BASELINE_QUEUE = "bench-baseline"
LOGIN_URL = "https://app.example.com/login"


def baseline_send(host: str, port: int, sender: str, to: str, subject: str, text: str, html: str) -> None:
    """Baseline (a) job: a new SMTP connection and an `EmailMessage` per email, as plain code would."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        smtp.send_message(message)


# --- the sink: its own process, counters in shared memory ---------------------------------------


def _serve_sink(
    port: int,
    received: Any,
    duplicates: Any,
    ready: Any,
    delay_s: float = 0.0,
    repeats_path: str | None = None,
) -> None:
    """Accept everything; count recipients and repeats (runs in a spawned process).

    `delay_s` holds each DATA answer that long, as a remote relay would (`bench peers`);
    `repeats_path` gets one line per repeated recipient (`bench soak` names them).
    """
    import asyncio

    from aiosmtpd.smtp import SMTP

    seen: set[str] = set()

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            if delay_s:
                await asyncio.sleep(delay_s)
            for rcpt in envelope.rcpt_tos:
                if rcpt in seen:
                    duplicates.value += 1
                    if repeats_path is not None:
                        with open(repeats_path, "a", encoding="utf-8") as repeats:
                            repeats.write(f"{rcpt}\n")
                seen.add(rcpt)
            received.value += len(envelope.rcpt_tos)
            return "250 2.0.0 OK"

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Handler()
    server = loop.run_until_complete(
        loop.create_server(lambda: SMTP(handler, hostname="localhost", loop=loop), "127.0.0.1", port)
    )
    ready.set()
    try:
        loop.run_forever()
    finally:
        server.close()


class _Sink:
    def __init__(self, port: int, delay_s: float = 0.0, repeats_path: str | None = None) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.port = port
        self.received = context.Value("q", 0, lock=False)
        self.duplicates = context.Value("q", 0, lock=False)
        ready = context.Event()
        self.process = context.Process(
            target=_serve_sink,
            args=(port, self.received, self.duplicates, ready, delay_s, repeats_path),
            daemon=True,
        )
        self.process.start()
        if not ready.wait(30):
            raise RuntimeError("the aiosmtpd sink did not start")

    def reset(self) -> None:
        self.received.value = 0
        self.duplicates.value = 0

    def wait_for(self, count: int, started: float | None = None) -> tuple[float, float, bool]:
        """(first delivery, last delivery, complete) in perf_counter time, polling every 2 ms."""
        import time

        deadline = time.perf_counter() + WAIT_S
        first = started
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            value = self.received.value
            if first is None and value > 0:
                first = now
            if value >= count:
                return first or now, now, True
            time.sleep(0.002)
        return first or deadline, time.perf_counter(), False

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


# --- worker processes ------------------------------------------------------------------------


def _start_workers(queue: str, env: dict[str, str], logdir: Any, *, burst: bool, url: str) -> list[Any]:
    rq = str(Path(sys.executable).parent / "rq")
    command = [rq, "worker", queue, "--url", url, *(["--burst"] if burst else [])]
    return spawn_logged([command] * WORKERS, env=env, logdir=logdir, prefix=queue)


# --- the four measurements -------------------------------------------------------------------


def _baseline(url: str, sink: _Sink, logdir: Any, sample: Any, tag: str) -> tuple[float, bool]:
    import redis
    from rq import Queue

    client = redis.Redis.from_url(url)
    queue = Queue(BASELINE_QUEUE, connection=client)  # RQ's defaults: pickle, plain Queue
    text = sample.get_body(("plain",)).get_content()
    html = sample.get_body(("html",)).get_content()
    for i in range(BASELINE):
        to = f"base{tag}-{i}@example.com"
        queue.enqueue(
            baseline_send, "127.0.0.1", sink.port, sample["From"], to, sample["Subject"], text, html
        )
    sink.reset()
    workers = _start_workers(
        BASELINE_QUEUE, worker_env(url, ours=False, smtp_port=sink.port), logdir, burst=True, url=url
    )
    first, last, complete = sink.wait_for(BASELINE)
    stop_process_groups(workers)
    return (BASELINE - 1) / (last - first), complete


def _transactional(url: str, sink: _Sink, logdir: Any, tag: str) -> tuple[float, float, bool]:
    import time

    from jobs.email import enqueue_email

    started = time.perf_counter()
    for i in range(TRANSACTIONAL):
        context = {"name": f"User {i}", "login_url": LOGIN_URL}
        enqueue_email(f"user{tag}-{i}@example.com", "welcome", context)
    enqueue_rate = TRANSACTIONAL / (time.perf_counter() - started)
    sink.reset()
    workers = _start_workers(
        "email", worker_env(url, ours=True, smtp_port=sink.port), logdir, burst=True, url=url
    )
    first, last, complete = sink.wait_for(TRANSACTIONAL)
    stop_process_groups(workers)
    return (TRANSACTIONAL - 1) / (last - first), enqueue_rate, complete


def _bulk(
    url: str, sink: _Sink, logdir: Any, tag: str, count: int, chunk_size: int | None
) -> tuple[float, float, int, bool]:
    import time

    from rq.worker_registration import get_keys

    from cache.connections import primary
    from jobs.email import enqueue_bulk_email

    workers = _start_workers(
        "email", worker_env(url, ours=True, smtp_port=sink.port), logdir, burst=False, url=url
    )
    deadline = time.monotonic() + 60
    while len(get_keys(connection=primary())) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # both workers blocked on the empty queue
    sink.reset()
    recipients = [
        {"to": f"bulk{tag}-{i}@example.com", "context": {"name": f"User {i}"}} for i in range(count)
    ]
    started = time.perf_counter()
    bulk = enqueue_bulk_email("welcome", recipients, context={"login_url": LOGIN_URL}, chunk_size=chunk_size)
    first, last, complete = sink.wait_for(count)
    time.sleep(0.2)  # a repeat delivered just after the last one is still counted
    stop_process_groups(workers)
    return count / (last - started), (count - 1) / (last - first), len(bulk.job_ids), complete


def _ceiling(sink: _Sink, tag: str, count: int, connections: int) -> tuple[float, bool]:
    import asyncio
    import datetime as dt
    import time

    import aiosmtplib

    from jobs.email.render import render_email
    from jobs.email.validation import EmailRequest, Mailbox, parse_sender

    sender = parse_sender("KRYONIX <no-reply@kryonix.local>")
    now = dt.datetime.now(dt.UTC)
    messages = [
        render_email(
            EmailRequest(
                to=(Mailbox("", f"ceil{tag}-{i}@example.com"),),
                template="welcome",
                locale="en",
                context={"name": f"User {i}", "login_url": LOGIN_URL},
                idempotency_key=f"ceiling-{tag}-{i}",
            ),
            sender=sender,
            now=now,
        )
        for i in range(count)
    ]

    async def send_all() -> None:
        todo = list(reversed(messages))

        async def lane() -> None:
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=sink.port, start_tls=False, local_hostname="localhost"
            )
            await smtp.connect()
            while todo:
                message = todo.pop()
                await smtp.sendmail(message.envelope_from, list(message.recipients), message.raw)
            await smtp.quit()

        await asyncio.gather(*(lane() for _ in range(connections)))

    sink.reset()
    started = time.perf_counter()
    asyncio.run(asyncio.wait_for(send_all(), WAIT_S))
    _, last, complete = sink.wait_for(count)
    return count / (last - started), complete


def _row(
    metric: str, samples: list[float], baselines: list[float], target: float, **extra: Any
) -> dict[str, Any]:
    import statistics

    value, baseline = statistics.median(samples), statistics.median(baselines)
    return {
        "bench": "email",
        "metric": metric,
        "value": round(value, 1),
        "unit": "emails/s",
        "baseline": round(baseline, 1),
        "ratio": round(value / baseline, 3),
        "target": target,
        "better": "higher",
        "rounds": len(samples),
        "samples": [round(x, 1) for x in samples],
        "baseline_samples": [round(x, 1) for x in baselines],
        **extra,
    }


def _sample_message() -> Any:
    import datetime as dt

    from jobs.email.render import render_email
    from jobs.email.validation import EmailRequest, Mailbox, parse_sender

    request = EmailRequest(
        to=(Mailbox("", "sample@example.com"),),
        template="welcome",
        locale="en",
        context={"name": "User 0", "login_url": LOGIN_URL},
        idempotency_key="sample",
    )
    sender = parse_sender("KRYONIX <no-reply@kryonix.local>")
    return render_email(request, sender=sender, now=dt.datetime.now(dt.UTC)).as_message()


def _measure(url: str, sink: _Sink, logdir: str, options: Any) -> list[dict[str, Any]]:
    """Interleaved rounds, so a noisy neighbour hurts both sides alike; medians reported."""
    rows = [] if options.bulk_only else [_measure_transactional(url, sink, logdir, options.rounds)]
    dups_before = int(sink.duplicates.value)
    connections = CEILING_CONNECTIONS
    if options.smtp_delay_ms:
        from cache.settings import get_settings

        connections = WORKERS * get_settings().smtp_max_connections
    ceiling, bulk, bulk_send, chunks = [], [], [], 0
    complete = True
    for n in range(options.rounds):
        rate, ok = _ceiling(sink, f"r{n}", options.bulk, connections)
        ceiling.append(rate)
        rate, send_rate, chunks, ok2 = _bulk(url, sink, logdir, f"r{n}", options.bulk, options.chunk_size)
        bulk.append(rate)
        bulk_send.append(send_rate)
        complete = complete and ok and ok2
    return [
        *rows,
        _row(
            "bulk_emails_per_s",
            bulk,
            ceiling,
            TARGET_BULK,
            recipients=options.bulk,
            chunk_jobs=chunks,
            smtp_delay_ms=options.smtp_delay_ms,
            baseline_desc=f"raw aiosmtplib, {connections} connections, pre-rendered, no queue",
            includes_enqueue=True,
            send_phase_emails_per_s=round(sorted(bulk_send)[len(bulk_send) // 2], 1),
            duplicates=int(sink.duplicates.value) - dups_before,
            workers=WORKERS,
            complete=complete,
        ),
    ]


def _measure_transactional(url: str, sink: _Sink, logdir: str, rounds: int) -> dict[str, Any]:
    sample = _sample_message()
    base, ours, enqueue_rates = [], [], []
    complete = True
    for n in range(rounds):
        rate, ok = _baseline(url, sink, logdir, sample, f"r{n}")
        base.append(rate)
        rate, enqueue_rate, ok2 = _transactional(url, sink, logdir, f"r{n}")
        ours.append(rate)
        enqueue_rates.append(enqueue_rate)
        complete = complete and ok and ok2
    return _row(
        "transactional_emails_per_s",
        ours,
        base,
        TARGET_TRANSACTIONAL,
        messages=TRANSACTIONAL,
        baseline_messages=BASELINE,
        baseline_desc="plain rq worker (forking, pickle), EmailMessage + smtplib connection per email",
        duplicates=int(sink.duplicates.value),
        enqueue_email_per_s=round(sorted(enqueue_rates)[len(enqueue_rates) // 2], 1),
        workers=WORKERS,
        complete=complete,
    )


def _options(argv: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench email")
    parser.add_argument("--bulk", type=int, default=BULK, help="recipients of the bulk send")
    parser.add_argument("--smtp-delay-ms", type=float, default=0.0, help="the sink's DATA answer delay")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--chunk-size", type=int, default=None, help="recipients per chunk job")
    parser.add_argument("--bulk-only", action="store_true", help="skip the transactional workload")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import tempfile

    from bench.common import private_primary
    from workers.dev.servers import free_port

    options = _options(argv or [])
    with private_primary("email") as server, tempfile.TemporaryDirectory(prefix="kx-bench-email-") as tmp:
        sink = _Sink(free_port(), delay_s=options.smtp_delay_ms / 1000)
        try:
            return _measure(server.url, sink, tmp, options)
        finally:
            sink.stop()
