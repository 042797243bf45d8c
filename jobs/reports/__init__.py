"""Report jobs: typed report types over the platform database, streamed to CSV, JSON Lines or HTML.

The web tier calls `enqueue_report(...)`; the `report` queue's worker runs
`jobs.reports.jobs.generate_report`, which writes `REPORTS_DIR/<report id>.<ext>`
atomically and returns path, format, rows, size and SHA-256.
"""

from jobs.reports.api import enqueue_report, validate_request
from jobs.reports.registry import FORMATS, REPORT_TYPES, ReportDefinitionError
from jobs.reports.scheduled import scheduled_report

__all__ = [
    "FORMATS",
    "REPORT_TYPES",
    "ReportDefinitionError",
    "enqueue_report",
    "scheduled_report",
    "validate_request",
]
