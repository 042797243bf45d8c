"""RQ's own test suite, run against our worker, job and queue classes.

`python -m tests.rq_conformance` (or `make rq-conformance`) downloads the RQ sdist of the
installed version, runs its worker, job, queue and registry tests on a private
redis-server with `KryonixWorker`, `KryonixJob` and `KryonixQueue` substituted, and
fails on any failure not listed in `expected.py` (and on any listed one that passes).
"""
