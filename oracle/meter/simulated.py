"""`Meter`: a simulated meter as a library (the demo and tests), without any command line.

    meter = Meter(key, Domain(31337, contract), household_profile(seed=1))
    readings = meter.simulate(start=now - 3600, interval=60, count=60)

It is the `sim:` source and a gateway in one object, with the simulator's original interface.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress

from oracle.meter.errors import ConfigError
from oracle.meter.gateway import DEFAULT_MAX_REFUSALS, Gateway
from oracle.meter.profiles import LoadProfile
from oracle.meter.sender import MAX_BATCH, Sender
from oracle.meter.signer import load_key
from oracle.meter.sources.sim import SimSource
from oracle.readings import MAX_WH, Domain, SignedReading

DEFAULT_INTERVAL = 60.0


class Meter:
    """A simulated meter holding its private key. It produces signed cumulative readings and,
    given an aiohttp session, delivers them to an oracle; with a state file it resumes where it
    stopped after a restart, its cumulative energy and timestamps never going backwards."""

    def __init__(
        self,
        private_key: bytes | str | LocalAccount,
        domain: Domain,
        profile: LoadProfile,
        *,
        speedup: float = 1.0,
        start_wh: int = 0,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        max_refusals: int = DEFAULT_MAX_REFUSALS,
    ) -> None:
        account = private_key if isinstance(private_key, LocalAccount) else load_key(private_key)
        if not (math.isfinite(speedup) and speedup > 0):
            raise ConfigError(f"speedup must be a positive number, got {speedup}")
        if not 0 <= start_wh <= MAX_WH:
            raise ConfigError(f"start Wh must be from 0 to {MAX_WH}, got {start_wh}")
        self.gateway = Gateway(
            account, domain, state_file=state_file, start_mwh=start_wh * 1000, clock=clock, max_refusals=max_refusals
        )
        self.domain = domain
        self.profile = profile
        self.speedup = speedup
        self._clock = clock
        self.source = SimSource(profile, resume=self.gateway.state, speedup=speedup, clock=clock)

    @property
    def address(self) -> ChecksumAddress:
        return self.gateway.address

    @property
    def cumulative_wh(self) -> int:
        return self.gateway.cumulative_wh

    @property
    def last_timestamp(self) -> int | None:
        return self.gateway.last_timestamp

    @property
    def unsent(self) -> tuple[SignedReading, ...]:
        """Readings taken but not yet delivered to an oracle, oldest first."""
        return self.gateway.unsent

    def reading_at(self, timestamp: int) -> SignedReading:
        """Advance the meter to `timestamp` (Unix seconds), then sign and return its reading.

        The energy drawn since the previous reading follows the profile over the simulated span
        (`speedup` times the real one). The first reading is the baseline: no energy is added.
        """
        return self.gateway.sign(self.source.advance(timestamp), queue=False)

    def simulate(self, start: int, interval: int, count: int) -> list[SignedReading]:
        """`count` readings at `start`, `start + interval`, ... (no clock, no network)."""
        if interval < 1:
            raise ValueError("interval must be at least one second")
        return [self.reading_at(start + i * interval) for i in range(count)]

    def take_reading(self) -> SignedReading:
        """A reading now (wall clock), queued for delivery."""
        return self.gateway.sign(self.source.now())

    async def deliver(self, session: aiohttp.ClientSession, oracle_url: str, *, batch_size: int = MAX_BATCH) -> bool:
        """Post the unsent readings (see `Gateway.deliver`): True when none are left."""
        return await self.gateway.deliver(Sender(session, oracle_url), batch_size=batch_size)

    async def run(
        self,
        session: aiohttp.ClientSession,
        oracle_url: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        count: int | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Take a reading every `interval` seconds (`count` of them, or until `stop` is set) and
        deliver them, retrying with exponential backoff while the oracle is unreachable."""
        self.source.interval = interval
        await self.gateway.run(self.source, Sender(session, oracle_url), interval=interval, count=count, stop=stop)
