"""The package's own errors; redis-py errors are translated into these at the boundary."""

from __future__ import annotations


class KryonixError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(KryonixError, ValueError):
    """A setting has a value of the wrong shape; the message names the variable."""


class RedisUnavailable(KryonixError, ConnectionError):
    """A Redis role could not be reached or refused us; the message names the setting."""

    def __init__(self, message: str, *, role: str, setting: str) -> None:
        super().__init__(message)
        self.role = role
        self.setting = setting

    @classmethod
    def explain(cls, detail: str, *, action: str | None = None) -> str:
        """The message for `detail` (which Redis, what went wrong, the setting); services add theirs."""
        return detail if action is None else f"could not {action}: {detail}"


class ClusterCommandError(KryonixError):
    """Redis Cluster refused a command it cannot route: keys in several hash slots (a script,
    a MULTI or a multi-key command whose keys share no `{hash tag}`), or a command cluster
    mode does not support. A key-layout bug, not an outage; the message says which."""
