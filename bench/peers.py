"""Ours against RQ's own workers and peer job systems, every workload in one run: `python -m bench peers`.

Workloads (`--workloads relay,sink,noop,bulk`, default all; a size of 0 skips one):
- relay: `--emails N` (default 1,000) welcome emails, one job each, through bench.email's
  aiosmtpd sink holding each DATA answer `--smtp-delay-ms` (default 100 ms, a remote relay);
- sink: `--sink-emails N` (default 1,000) the same through a sink that answers at once (CPU-bound);
- noop: `--jobs N` (default 2,000; RQ's forking Worker, ~10x slower, N/5) no-op jobs/s, and
  Redis commands per job from INFO commandstats after CONFIG RESETSTAT, less the bench's
  own polls and the peers' one INCR per job; the RQ workers are timed to their burst exit,
  so their shutdown commands count;
- bulk: ours only, the relay's N emails as ONE `enqueue_bulk_email` (project defaults).

One private redis-server (the shipped redis.conf), 2 worker processes per system at its
documented defaults (bench.peer_systems). Work is queued first, then the workers start;
the clock runs from the first job taken (first delivery) to the last. An email drain ends
at N deliveries or `--budget-s` (default 3 s) after the first, whichever comes first.
`--rounds R` (default 3) rounds interleave workloads and systems; medians are reported,
one line per workload metric with ours against every system, against the best peer, and
the targets of bench.peer_targets with met / missed. Repeats per recipient are counted
for every email workload (target 0). Ours runs `enqueue_email`; the others
bench.email's `baseline_send` (a new smtplib connection and an `EmailMessage` per email).
`--email-concurrency N` sets EMAIL_CONCURRENCY for our workers (default: unset, the
project's default); EMAIL_CONCURRENCY and SMTP_MAX_CONNECTIONS from the caller's
environment reach our workers. A peer not installed (`pip install -e '.[bench]'`) is a
skipped line; arq always is (every release pins redis<6; the project needs redis-py 8).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from bench import peer_targets as targets
from bench import peer_workloads as workloads
from bench.common import median, private_primary
from bench.peer_systems import OURS, SYSTEMS, WORKERS, Mail, System, installed

JOBS = 2_000
EMAILS = 1_000
SINK_EMAILS = 1_000
ROUNDS = 3
RELAY_DELAY_MS = 100.0
BUDGET_S = 3.0
WORKLOADS = ("relay", "sink", "noop", "bulk")


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench peers")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {WORKLOADS}")
    parser.add_argument("--jobs", type=int, default=JOBS, help="no-op jobs (0: no noop workload)")
    parser.add_argument("--emails", type=int, default=EMAILS, help="relay and bulk emails (0: neither)")
    parser.add_argument("--sink-emails", type=int, default=SINK_EMAILS, help="0 ms sink emails (0: none)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--smtp-delay-ms", type=float, default=RELAY_DELAY_MS, help="the relay's answer delay"
    )
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="email drain limit after the first")
    parser.add_argument("--email-concurrency", type=int, default=None, help="EMAIL_CONCURRENCY for ours")
    options = parser.parse_args(argv)
    wanted = [w.strip() for w in options.workloads.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {WORKLOADS}")
    sizes = {
        "relay": options.emails,
        "sink": options.sink_emails,
        "noop": options.jobs,
        "bulk": options.emails,
    }
    options.wanted = [w for w in WORKLOADS if w in wanted and sizes[w] > 0]
    return options


def _mail(port: int) -> Mail:
    from bench.email import _sample_message

    sample = _sample_message()
    text, html = sample.get_body(("plain",)).get_content(), sample.get_body(("html",)).get_content()
    return Mail(port, sample["From"], sample["Subject"], text, html)


def _line(metric: str, unit: str, comparison: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    better = "lower" if unit == "commands/job" else "higher"
    return {"bench": "peers", "metric": metric, "unit": unit, "better": better, **comparison, **extra}


def _email_line(
    metric: str,
    drains: Mapping[str, Sequence[workloads.EmailDrain]],
    wanted: Sequence[targets.Target],
    **extra: Any,
) -> dict[str, Any]:
    rates = {name: median([d.emails_per_s for d in runs]) for name, runs in drains.items()}
    return _email_fields(metric, rates, drains, wanted, **extra)


def _email_fields(
    metric: str,
    rates: Mapping[str, float],
    drains: Mapping[str, Sequence[workloads.EmailDrain]],
    wanted: Sequence[targets.Target],
    **extra: Any,
) -> dict[str, Any]:
    comparison = targets.comparison(rates, wanted)
    duplicates = {name: sum(d.duplicates for d in runs) for name, runs in drains.items()}
    no_repeat = targets.check(targets.DUPLICATES_TARGET, duplicates[OURS.name], {})
    comparison["targets"] = [*comparison["targets"], {**no_repeat, "against": "duplicates"}]
    comparison["targets_met"] = comparison["targets_met"] and no_repeat["status"] == "met"
    return _line(
        metric,
        "emails/s",
        comparison,
        duplicates=duplicates,
        delivered={name: [d.delivered for d in runs] for name, runs in drains.items()},
        complete={name: all(d.complete for d in runs) for name, runs in drains.items()},
        **extra,
    )


def _noop_lines(
    drains: Mapping[str, Sequence[workloads.Drain]], common: Mapping[str, Any]
) -> list[dict[str, Any]]:
    rate = {name: median([d.jobs_per_s for d in runs]) for name, runs in drains.items()}
    wall = {name: round(median([d.wall_jobs_per_s for d in runs]), 1) for name, runs in drains.items()}
    commands = {name: median([d.commands_per_job for d in runs]) for name, runs in drains.items()}
    complete = {name: all(d.complete for d in runs) for name, runs in drains.items()}
    return [
        _line(
            "noop_jobs_per_s",
            "jobs/s",
            targets.comparison(rate, targets.NOOP_TARGETS),
            wall_with_startup=wall,
            complete=complete,
            **common,
        ),
        _line(
            "redis_commands_per_noop_job",
            "commands/job",
            targets.comparison(commands, targets.COMMANDS_TARGETS, better="lower"),
            **common,
        ),
    ]


def _measure(
    present: list[System], options: argparse.Namespace, env: Mapping[str, str], logdir: str
) -> dict[str, dict[str, list[Any]]]:
    """Every wanted workload, every system, `rounds` interleaved rounds: {workload: {system: drains}}."""
    from bench.email import _Sink
    from workers.dev.servers import free_port

    wanted = options.wanted
    found: dict[str, dict[str, list[Any]]] = {w: {} for w in wanted}
    relay = (
        _Sink(free_port(), delay_s=options.smtp_delay_ms / 1000) if {"relay", "bulk"} & set(wanted) else None
    )
    sink = _Sink(free_port()) if "sink" in wanted else None
    try:
        with private_primary("peers") as server:
            client, url = server.client(), server.url
            os.environ["BENCH_PEERS_REDIS_URL"] = url  # the peers' apps, imported here to enqueue
            email = {"url": url, "logdir": logdir, "budget_s": options.budget_s, "env": env}
            for r in range(options.rounds):
                for workload in wanted:
                    for system in present if workload != "bulk" else [OURS]:
                        runs = found[workload].setdefault(system.name, [])
                        if workload == "noop":
                            count = max(1, options.jobs // system.noop_share)
                            runs.append(workloads.noop(system, client, url, count, logdir, **env))
                        elif workload == "bulk":
                            assert relay is not None
                            mail = _mail(relay.port)
                            runs.append(
                                workloads.bulk(
                                    client, mail=mail, count=options.emails, tag=f"{r}", sink=relay, **email
                                )
                            )
                        else:
                            target, count = (
                                (relay, options.emails)
                                if workload == "relay"
                                else (sink, options.sink_emails)
                            )
                            assert target is not None
                            mail = _mail(target.port)
                            runs.append(
                                workloads.emails(
                                    system,
                                    client,
                                    mail=mail,
                                    count=count,
                                    tag=f"{workload}{r}",
                                    sink=target,
                                    **email,
                                )
                            )
            client.flushall()
    finally:
        for started in (relay, sink):
            if started is not None:
                started.stop()
    return found


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    options = _options(argv or [])
    present, skipped = installed(SYSTEMS, lambda module: importlib.util.find_spec(module) is not None)
    rows: list[dict[str, Any]] = list(skipped)
    env = {"EMAIL_CONCURRENCY": str(options.email_concurrency)} if options.email_concurrency else {}
    with tempfile.TemporaryDirectory(prefix="kx-bench-peers-") as logdir:
        found = _measure(present, options, env, logdir)
    common: dict[str, Any] = {"rounds": options.rounds, "worker_processes": WORKERS}
    if env:
        common["email_concurrency"] = options.email_concurrency
    relay_common = {**common, "emails": options.emails, "smtp_delay_ms": options.smtp_delay_ms}
    relay_common["budget_s"] = options.budget_s
    if "noop" in found:
        jobs = {s.name: max(1, options.jobs // s.noop_share) for s in present}
        rows += _noop_lines(found["noop"], {**common, "jobs": jobs})
    if "relay" in found:
        rows.append(_email_line("emails_per_s_relay", found["relay"], targets.RELAY_TARGETS, **relay_common))
    if "bulk" in found:
        rows.append(_bulk_line(found, relay_common))
    if "sink" in found:
        sink_common = {
            **common,
            "emails": options.sink_emails,
            "smtp_delay_ms": 0,
            "budget_s": options.budget_s,
        }
        rows.append(_email_line("emails_per_s_sink", found["sink"], targets.SINK_TARGETS, **sink_common))
    return rows


def _bulk_line(found: Mapping[str, Mapping[str, list[Any]]], common: Mapping[str, Any]) -> dict[str, Any]:
    """Ours as one bulk send against the peers' one-job-per-email relay figures (when measured)."""
    bulk = found["bulk"]
    relay = found.get("relay", {})
    rates = {
        name: median([d.emails_per_s for d in runs]) for name, runs in relay.items() if name != OURS.name
    }
    rates[OURS.name] = median([d.emails_per_s for d in bulk[OURS.name]])
    extra: dict[str, Any] = {
        "bulk_send": "one enqueue_bulk_email, project defaults (chunks of 250, 4 connections)"
    }
    if OURS.name in relay:
        extra["ours_one_job_per_email"] = round(median([d.emails_per_s for d in relay[OURS.name]]), 3)
    return _email_fields("emails_per_s_relay_bulk", rates, bulk, targets.BULK_TARGETS, **extra, **common)
