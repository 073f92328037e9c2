"""What can go wrong in the meter gateway, by who has to act on it."""

from __future__ import annotations


class ConfigError(ValueError):
    """Configuration the user has to fix (bad key, source URL, state file, ...): exit status 2."""


class SourceUnavailable(Exception):
    """The source cannot be read right now (unreachable, disconnected, silent): retried with backoff."""


class CounterWentBackwards(Exception):
    """The source's counter is below the last signed reading: nothing is signed."""


class GatewayStopped(Exception):
    """A problem that persisted for the configured number of attempts and needs a human: exit status 3."""
