"""`email.sent` / `email.failed` events to the user who asked for an email (best effort)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("kryonix.email")

SENT = "email.sent"
FAILED = "email.failed"
BULK_PROGRESS = "email.bulk_progress"  # one per chunk run of a bulk send


def publish(requested_by: str | None, event: str, data: Mapping[str, Any]) -> None:
    """Publish `event` to `requested_by`'s channel; never raises: an event must not fail a job."""
    if requested_by is None:
        return
    try:
        from cache.realtime.service import RealtimeService

        RealtimeService().publish_user_event(requested_by, event, data)
    except Exception as exc:
        log.warning("could not publish %s to user %s: %s", event, requested_by, exc)
