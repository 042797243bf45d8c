"""KRYONIX worker processes: RQ worker/job classes, scheduler, maintenance and the operator CLI."""

import jobs  # noqa: F401 - first: fixes RQ_KEY_PREFIX before any module of ours imports rq
