# KRYONIX workers: the production process tree (supervisord) in one image.
# Build:  docker build -t kryonix-workers .
# Run:    docker run -e REDIS_URL=redis://redis:6379/0 -e SMTP_HOST=mail ... kryonix-workers
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A non-root user owns only what it must write: the run and data directories.
RUN groupadd --system kryonix && useradd --system --gid kryonix --home-dir /app --shell /usr/sbin/nologin kryonix

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cache ./cache
COPY jobs ./jobs
COPY workers ./workers
COPY bench ./bench
RUN pip install ".[ops,postgres]"

COPY supervisord.conf redis.conf redis-cache.conf .env.example ./
RUN mkdir -p /app/var/run /app/var/reports && chown -R kryonix:kryonix /app/var

# The RQ environment every `rq worker` needs (see README, "Running workers"), and the
# defaults supervisord.conf expects. Redis, SMTP and database addresses come from `docker run -e`.
ENV RQ_WORKER_CLASS=workers.worker.KryonixWorker \
    RQ_JOB_CLASS=workers.job.KryonixJob \
    RQ_QUEUE_CLASS=jobs.queues.KryonixQueue \
    KRYONIX_RUN_DIR=/app/var/run \
    KRYONIX_EMAIL_WORKERS=2 \
    KRYONIX_REPORT_WORKERS=1 \
    REPORTS_DIR=/app/var/reports \
    DATABASE_URL=sqlite:////app/var/kryonix.db

USER kryonix

# Unhealthy when a Redis role is unreachable or the primary can evict.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "-m", "workers", "status", "--quiet"]

# `supervise` fills in the RQ classes, then execs `supervisord -n`; each `python -m workers worker`
# program derives RQ_REDIS_URL from REDIS_URL itself.
CMD ["python", "-m", "workers", "supervise"]
