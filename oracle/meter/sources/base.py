"""The one interface every source implements, and the unit arithmetic they share.

A source yields `RawReading`s: the meter's cumulative imported energy (floored to milli-Wh) and
when it was measured. It raises `SourceUnavailable` when it cannot be read (the gateway retries
with backoff) and `ConfigError` when it never will be (wrong URL, token, register). A value it
cannot trust (bad CRC, missing register, `unavailable`) it logs and skips: no reading.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import Protocol
from urllib.parse import SplitResult

from oracle.meter.errors import ConfigError

MWH_PER_UNIT = {"Wh": 1_000, "kWh": 1_000_000, "MWh": 1_000_000_000}  # milli-Wh per unit


@dataclass(frozen=True, slots=True)
class RawReading:
    """A cumulative energy the source measured, not yet signed."""

    energy_mwh: int  # cumulative imported energy in milli-Wh, floored
    timestamp: int  # Unix seconds: the meter's own time where it has one, else when it was read
    sim_time: float | None = None  # the simulator's clock; None for a real meter


class Source(Protocol):
    """A meter the gateway reads: `async for raw in source.readings()`."""

    @property
    def name(self) -> str:
        """The source for logs: its URL without secrets."""
        ...

    def readings(self) -> AsyncIterator[RawReading]:
        """Readings as the meter gives them; ends or raises `SourceUnavailable` when it is lost."""
        ...


class BadValue(ValueError):
    """A value a source received that is not a cumulative energy (skipped, with this message)."""


def to_mwh(value: object, unit: str) -> int:
    """A cumulative energy `value` in `unit` (Wh, kWh, MWh) as whole milli-Wh, floored (never up)."""
    factor = MWH_PER_UNIT.get(unit)
    if factor is None:
        raise BadValue(f"unit {unit!r} is not an energy unit ({', '.join(MWH_PER_UNIT)})")
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise BadValue(f"{value!r} is not a number")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as err:
        raise BadValue(f"{value!r} is not a number") from err
    if not number.is_finite() or number < 0:
        raise BadValue(f"{value!r} is not a cumulative energy (finite, 0 or more)")
    return int((number * factor).to_integral_value(rounding=ROUND_FLOOR))


def energy_unit(text: str, scheme: str) -> str:
    """An energy unit option of a source URL, checked."""
    if text not in MWH_PER_UNIT:
        raise ConfigError(f"{scheme}: unit={text} is not an energy unit: use one of {', '.join(MWH_PER_UNIT)}")
    return text


def read_secret(url: SplitResult, option: str, value: str) -> str:
    """The content of a secret file named in a source URL (`password-file=`, `token-file=`)."""
    try:
        secret = Path(value).read_text().strip()
    except OSError as err:
        raise ConfigError(f"{url.scheme}: cannot read {option}={value}: {err.strerror}") from err
    if not secret:
        raise ConfigError(f"{url.scheme}: {option}={value} is empty")
    return secret


def public_url(url: SplitResult) -> str:
    """The URL for logs: no password, no query (which may name secret files, harmless but noisy)."""
    host = url.hostname or ""
    if url.port is not None:
        host += f":{url.port}"
    user = f"{url.username}@" if url.username else ""
    return f"{url.scheme}://{user}{host}{url.path}"
