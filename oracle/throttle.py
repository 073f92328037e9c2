"""Warnings about misbehaving clients, at most one line per cause per minute.

A client that sends a broken body in a loop must not fill the disk with log lines: the first
occurrence of a cause is logged at once, later ones within `every` seconds are only counted, and
the next line of that cause says how many were held back. Causes are short fixed codes (an error
code, an exception class), never a client's address, so the table stays small.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

DEFAULT_EVERY = 60.0


class ThrottledWarnings:
    def __init__(
        self, logger: logging.Logger, every: float = DEFAULT_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._every = every
        self._clock = clock
        self._causes: dict[str, tuple[float, int]] = {}  # cause -> (when last logged, held back since)

    def warn(self, cause: str, message: str, *args: object) -> bool:
        """Log `message` unless `cause` was logged less than `every` seconds ago; whether it was logged."""
        now = self._clock()
        last = self._causes.get(cause)
        if last is not None and now - last[0] < self._every:
            self._causes[cause] = (last[0], last[1] + 1)
            return False
        held_back = 0 if last is None else last[1]
        suffix = f" ({held_back} more like it since the last report)" if held_back else ""
        self._logger.warning(message + suffix, *args)
        self._causes[cause] = (now, 0)
        return True


class ClientFaultFilter(logging.Filter):
    """On aiohttp's server logger: a request the client broke (a body that does not decode, a
    connection dropped mid-upload) becomes a throttled one-line warning instead of an ERROR with a
    traceback per request. Errors of the server itself pass unchanged."""

    def __init__(self, warnings: ThrottledWarnings) -> None:
        super().__init__()
        self._warnings = warnings

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not is_client_fault(exc):
            return True
        cause = type(exc).__name__
        self._warnings.warn(cause, "rejected request: %s (%s)", _describe(exc), cause)
        return False


def is_client_fault(exc: BaseException) -> bool:
    """A request the client broke: unparsable, a body that does not decode, a connection dropped."""
    return isinstance(exc, HttpProcessingError | RequestPayloadError | ConnectionError)


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or "connection lost"
    return str(message).splitlines()[0][:200]
