"""`sim:<profile>`: the simulated meter, a load profile integrated over (optionally faster) time.

Readings carry wall-clock timestamps (the contract rejects readings from the future); the profile
runs on a simulated clock that may go faster (`speedup`), so a day can be replayed in a minute.
The first reading is the baseline: no energy is added before it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable

from oracle.meter.profiles import LoadProfile
from oracle.meter.sources.base import RawReading
from oracle.meter.state import MeterState
from oracle.readings import MAX_WH


class SimSource:
    """A load profile read as a meter, resuming where the gateway's state left it."""

    def __init__(
        self,
        profile: LoadProfile,
        *,
        resume: MeterState,
        speedup: float = 1.0,
        interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.profile = profile
        self.speedup = speedup
        self.interval = interval
        self._clock = clock
        self._mwh = resume.cumulative_mwh
        self._timestamp = resume.timestamp
        self._sim_time = resume.sim_time

    @property
    def name(self) -> str:
        return f"sim:{self.profile.spec}"

    def advance(self, timestamp: int) -> RawReading:
        """The meter at `timestamp` (after the last one): the profile's energy since then is added."""
        if self._timestamp is not None and timestamp <= self._timestamp:
            raise ValueError(f"timestamp {timestamp} is not after the last reading's ({self._timestamp})")
        if self._timestamp is None or self._sim_time is None:
            sim_time, added_mwh = float(timestamp), 0
        else:
            sim_time = self._sim_time + (timestamp - self._timestamp) * self.speedup
            added_mwh = math.floor(self.profile.energy_wh(self._sim_time, sim_time) * 1000)
        self._mwh = min(self._mwh + added_mwh, MAX_WH * 1000 + 999)
        self._timestamp, self._sim_time = timestamp, sim_time
        return RawReading(self._mwh, timestamp, sim_time)

    def now(self) -> RawReading:
        """The meter now (wall clock); within the same second as the last, one second on."""
        now = int(self._clock())
        return self.advance(now if self._timestamp is None else max(now, self._timestamp + 1))

    async def readings(self) -> AsyncIterator[RawReading]:
        while True:
            if self._timestamp is not None and int(self._clock()) <= self._timestamp:
                await asyncio.sleep(self._timestamp + 1 - self._clock())  # a previous run's clock was ahead
                continue
            yield self.now()
            await asyncio.sleep(self.interval)
