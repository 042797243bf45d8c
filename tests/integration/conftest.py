"""Fixtures shared by the integration tests (real processes)."""

from tests.integration.processes import processes
from tests.integration.sentinel import sentinel_cluster

__all__ = ["processes", "sentinel_cluster"]
