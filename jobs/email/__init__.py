"""Email jobs: jinja2 templates, aiosmtplib delivery, retries, exactly-once to the user, bulk.

The web tier calls `enqueue_email` / `enqueue_bulk_email`; see docs/email.md.
"""

from jobs.email.api import enqueue_bulk_email, enqueue_email
from jobs.email.bulk import BulkEmail, BulkStatus, bulk_status
from jobs.email.validation import Attachment, EmailValidationError

__all__ = [
    "Attachment",
    "BulkEmail",
    "BulkStatus",
    "EmailValidationError",
    "bulk_status",
    "enqueue_bulk_email",
    "enqueue_email",
]
