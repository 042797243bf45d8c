"""Fixtures shared by the integration tests (real processes)."""

from tests.integration.processes import processes

__all__ = ["processes"]
