"""Load profiles of the simulated meter: power drawn over simulated time (deterministic per seed)."""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod

from oracle.meter.errors import ConfigError

_BUCKET_SECONDS = 60  # profiles are piecewise constant over simulated minutes
_MINUTES_PER_DAY = 1440


def _unit(seed: int, *parts: int) -> float:
    """A deterministic pseudo-random number in [0, 1) for (seed, parts): the same on every run."""
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2**64


def _bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((hour - centre) / width) ** 2)


class LoadProfile(ABC):
    """Power drawn over simulated time, constant within each simulated minute."""

    spec: str

    @abstractmethod
    def power_w(self, minute: int) -> float:
        """Mean power in W during simulated minute `minute` (minutes since the Unix epoch, UTC)."""

    def energy_wh(self, start: float, end: float) -> float:
        """Energy in Wh drawn between simulated times `start` and `end` (Unix seconds)."""
        if end <= start:
            return 0.0
        joules = 0.0
        minute = math.floor(start / _BUCKET_SECONDS)
        while minute * _BUCKET_SECONDS < end:
            lo = max(start, minute * _BUCKET_SECONDS)
            hi = min(end, (minute + 1) * _BUCKET_SECONDS)
            joules += self.power_w(minute) * (hi - lo)
            minute += 1
        return joules / 3600


class HouseholdProfile(LoadProfile):
    """A daily curve: a low base load at night, a morning and a larger evening peak, appliance spikes."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.spec = "household"

    def power_w(self, minute: int) -> float:
        hour = (minute % _MINUTES_PER_DAY) / 60
        curve = 150 + 900 * _bump(hour, 7.25, 0.75) + 350 * _bump(hour, 12.5, 1.5) + 1200 * _bump(hour, 19.0, 1.5)
        power = curve * (0.75 + 0.5 * _unit(self.seed, minute, 0))
        if _unit(self.seed, minute, 1) < 0.02:  # kettle, oven, washing machine heating up
            power += 1800
        return power


class EvProfile(LoadProfile):
    """An electric car: standby most of the day, one 7.4 kW charging block most evenings."""

    CHARGE_W = 7400.0
    STANDBY_W = 3.0

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.spec = "ev"

    def _block(self, day: int) -> tuple[int, int] | None:
        """The charging block of `day` as (first, end) minute since the epoch, or None if it skips."""
        if _unit(self.seed, day, 2) < 0.2:
            return None
        first = day * _MINUTES_PER_DAY + 17 * 60 + 30 + int(_unit(self.seed, day, 0) * 120)
        return first, first + 120 + int(_unit(self.seed, day, 1) * 180)

    def power_w(self, minute: int) -> float:
        day = minute // _MINUTES_PER_DAY
        for block in (self._block(day), self._block(day - 1)):  # a block may run past midnight
            if block is not None and block[0] <= minute < block[1]:
                return self.CHARGE_W
        return self.STANDBY_W


class ConstantProfile(LoadProfile):
    """A fixed power draw."""

    def __init__(self, watts: float) -> None:
        self.watts = watts
        self.spec = f"constant:{watts:g}"

    def power_w(self, minute: int) -> float:
        return self.watts

    def energy_wh(self, start: float, end: float) -> float:
        return self.watts * max(0.0, end - start) / 3600


PROFILE_NAMES = ("household", "ev", "constant:<W>")


def parse_profile(spec: str, seed: int) -> LoadProfile:
    """A profile from its name: "household", "ev" or "constant:<W>" (watts, e.g. "constant:500")."""
    if spec == "household":
        return HouseholdProfile(seed)
    if spec == "ev":
        return EvProfile(seed)
    name, sep, value = spec.partition(":")
    if name == "constant" and sep:
        try:
            watts = float(value)
        except ValueError:
            watts = math.nan
        if not math.isfinite(watts) or watts < 0:
            raise ConfigError(f"constant profile needs a power of 0 W or more, e.g. constant:500 (got {value!r})")
        return ConstantProfile(watts)
    raise ConfigError(f"unknown profile {spec!r}: expected one of {', '.join(PROFILE_NAMES)}")


def default_seed(address: str) -> int:
    """A seed derived from the meter's address: every meter differs, each is reproducible."""
    return int(address, 16) % 2**32
