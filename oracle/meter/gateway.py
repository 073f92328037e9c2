"""The gateway: signs what a source reads, keeps it in the state file, and delivers it.

It knows no source kind (see `sources/`), and the sender knows no key. Rules a meter operator
relies on: a reading is signed only for a value the source gave (never invented or repeated), its
timestamp strictly grows, its energy never goes below the last signed reading (a counter that goes
backwards is refused and nothing is signed), and the state is saved before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress

from oracle.meter.errors import ConfigError, CounterWentBackwards, GatewayStopped, SourceUnavailable
from oracle.meter.sender import MAX_BATCH, OracleUnreachable, Refused, Sender
from oracle.meter.sources.base import RawReading, Source
from oracle.meter.state import MeterState, StateFile
from oracle.readings import MAX_WH, Domain, SignedReading, sign_reading

_LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_REFUSALS = 5
MAX_UNSENT = 10_000  # older unsent readings beyond this are dropped: the newest carries the total
MIN_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 60.0


class NotNewer(ValueError):
    """A value whose timestamp is not after the last signed reading's: skipped, nothing signed."""


class Gateway:
    """A meter key with its state: signs raw readings, queues them, delivers them to an oracle."""

    def __init__(
        self,
        account: LocalAccount,
        domain: Domain,
        *,
        state_file: Path | None = None,
        start_mwh: int = 0,
        clock: Callable[[], float] = time.time,
        max_refusals: int = DEFAULT_MAX_REFUSALS,
        retry_delays: tuple[float, float] = (MIN_RETRY_DELAY, MAX_RETRY_DELAY),
        read_only: bool = False,
    ) -> None:
        if not 0 <= start_mwh <= MAX_WH * 1000:
            raise ConfigError(f"start Wh must be from 0 to {MAX_WH}, got {start_mwh // 1000}")
        if max_refusals < 1:
            raise ConfigError(f"--max-refusals must be at least 1, got {max_refusals}")
        self._account = account
        self.domain = domain
        self._clock = clock
        self.max_refusals = max_refusals
        self._retry_min, self._retry_max = retry_delays
        self._read_only = read_only  # --dry-run: the state file is read, never written
        self._store = StateFile(state_file) if state_file is not None else None
        saved = self._store.load() if self._store is not None else None
        if saved is not None and saved.meter != self.address:
            raise ConfigError(
                f"state file {state_file} belongs to meter {saved.meter}, not {self.address}: "
                "give each meter key its own --state-file"
            )
        self._state = saved or MeterState(meter=self.address, cumulative_mwh=start_mwh)
        self._oracle_lost = False  # an outage is logged once when lost and once when back
        self._source_lost = False
        self.refusals = 0  # readings the oracle refused in a row
        self.backwards = 0  # values below the last signed reading in a row
        self.last_problem = ""

    @property
    def address(self) -> ChecksumAddress:
        return self._account.address

    @property
    def state(self) -> MeterState:
        return self._state

    @property
    def cumulative_wh(self) -> int:
        return self._state.cumulative_wh

    @property
    def last_timestamp(self) -> int | None:
        return self._state.timestamp

    @property
    def unsent(self) -> tuple[SignedReading, ...]:
        """Readings signed but not yet delivered to an oracle, oldest first."""
        return self._state.unsent

    # ------------------------------------------------------------------ signing

    def _check(self, raw: RawReading) -> int:
        """The reading's whole Wh (floored), after the rules every signed reading keeps."""
        last = self._state
        if last.timestamp is not None and raw.timestamp <= last.timestamp:
            raise NotNewer(f"timestamp {raw.timestamp} is not after the last reading's ({last.timestamp})")
        wh = raw.energy_mwh // 1000
        if last.timestamp is not None and wh < last.cumulative_wh:
            raise CounterWentBackwards(
                f"the meter's counter went backwards: it reads {wh} Wh, below the last signed reading of "
                f"{last.cumulative_wh} Wh at {last.timestamp}; nothing is signed. If the meter was replaced or "
                "the source now reads another register, this key's readings can never continue: create a new "
                "key (energykart-meter new-key), have the registrar register it, and start with a new --state-file"
            )
        if wh > MAX_WH:
            raise ValueError(f"{wh} Wh is beyond the contract's maximum reading ({MAX_WH} Wh): check the unit")
        return wh

    def sign(self, raw: RawReading, *, queue: bool = True) -> SignedReading:
        """Sign `raw` (checked), save the state, and queue the reading for delivery."""
        wh = self._check(raw)
        reading = sign_reading(self._account.key, self.domain, wh, raw.timestamp)
        state = replace(self._state, cumulative_mwh=raw.energy_mwh, timestamp=raw.timestamp, sim_time=raw.sim_time)
        if queue:
            unsent = (*state.unsent, reading)
            if len(unsent) > MAX_UNSENT:
                _LOGGER.warning("%d readings undelivered: dropping the oldest", len(unsent))
                unsent = unsent[-MAX_UNSENT:]
            state = replace(state, unsent=unsent)
        self._commit(state)
        self.backwards = 0
        return reading

    def preview(self, raw: RawReading) -> dict[str, Any]:
        """What `sign` would sign (--dry-run): checked, remembered in memory only, not signed."""
        wh = self._check(raw)
        self._state = replace(self._state, cumulative_mwh=raw.energy_mwh, timestamp=raw.timestamp)
        return {
            "meter": self.address,
            "cumulativeWh": wh,
            "timestamp": raw.timestamp,
            "chainId": self.domain.chain_id,
            "contract": self.domain.contract,
        }

    def _commit(self, state: MeterState) -> None:
        # Saved before anything is sent, so a restart never signs below what an oracle may have.
        if self._store is not None and not self._read_only:
            self._store.save(state)
        self._state = state

    # ------------------------------------------------------------------ delivery

    async def deliver(self, sender: Sender, *, batch_size: int = MAX_BATCH) -> bool:
        """Post the unsent readings, oldest first. True when none are left; False when the oracle
        is unreachable or failing (the readings stay queued: call again later).

        A reading the oracle already has (409 stale) counts as delivered. One it refuses (e.g. a
        meter not registered) is logged with what to do and dropped: the next reading carries the
        total; `refusals` counts them until one is accepted.
        """
        while self._state.unsent:
            batch = self._state.unsent[:batch_size]
            try:
                outcomes = await sender.post(batch)
            except OracleUnreachable as err:
                if not self._oracle_lost:
                    self._oracle_lost = True
                    _LOGGER.warning("oracle %s unreachable (%s); keeping readings to retry", sender.oracle_url, err)
                return False
            if self._oracle_lost:
                _LOGGER.info("oracle %s reachable again", sender.oracle_url)
                self._oracle_lost = False
            if outcomes == "too_large":
                if batch_size == 1:
                    _LOGGER.error("oracle refused a single reading as too large; dropping it")
                    self._delivered(1)
                batch_size = max(1, batch_size // 2)
                continue
            for reading, outcome in zip(batch, outcomes, strict=True):
                what = f"reading {reading.cumulative_wh} Wh @ {reading.timestamp}"
                if isinstance(outcome, Refused):
                    self.refusals += 1
                    self.last_problem = (
                        f"the oracle refused {self.refusals} reading(s) in a row "
                        f"({outcome.error}: {outcome.detail}); {outcome.hint}"
                    )
                    _LOGGER.error("%s refused (%s): %s; %s; dropped", what, outcome.error, outcome.detail, outcome.hint)
                else:
                    self.refusals = 0
                    _LOGGER.info("%s %s", what, "accepted" if outcome == "accepted" else "already delivered (stale)")
            self._delivered(len(batch))
        return True

    def _delivered(self, count: int) -> None:
        self._commit(replace(self._state, unsent=self._state.unsent[count:]))

    # ------------------------------------------------------------------ the loop

    async def run(
        self,
        source: Source,
        sender: Sender,
        *,
        interval: float,
        stop: asyncio.Event | None = None,
        once: bool = False,
        dry_run: bool = False,
        count: int | None = None,
        give_up_after: float | None = None,
        out: TextIO | None = None,
    ) -> int:
        """Read `source`, sign the newest value at most once per `interval`, deliver with backoff.

        Returns how many readings were signed (or, with `dry_run`, printed to `out`). It ends when
        `stop` is set, after `count` readings (one with `once`) once delivered, or when `give_up_after`
        seconds have passed. Raises `GatewayStopped` when the oracle refused `max_refusals`
        readings in a row or the counter stayed backwards that long, `ConfigError` when the source
        cannot work as configured.
        """
        if interval < 1:
            raise ConfigError("interval must be at least one second (timestamps are whole seconds)")
        stop = stop or asyncio.Event()
        limit = 1 if once else count
        latest: list[RawReading] = []  # the newest value not yet signed (at most one)
        arrived = asyncio.Event()

        def on_reading(raw: RawReading) -> None:
            latest[:] = [raw]
            arrived.set()

        pump = asyncio.create_task(self._pump(source, on_reading))
        deadline = None if give_up_after is None else self._clock() + give_up_after
        taken = 0
        next_sign = self._clock()
        next_retry = 0.0
        retry_delay = self._retry_min
        try:
            while not stop.is_set():
                if pump.done():
                    pump.result()  # a ConfigError from the source ends the run
                more = limit is None or taken < limit
                if more and latest and self._clock() >= next_sign:
                    raw = latest.pop()
                    arrived.clear()
                    if self._take(raw, dry_run, out):
                        taken += 1
                        next_sign = self._clock() + interval
                if self._state.unsent and self._clock() >= next_retry:
                    if await self.deliver(sender):
                        next_retry, retry_delay = 0.0, self._retry_min
                    else:
                        next_retry = self._clock() + retry_delay * random.uniform(0.8, 1.2)
                        retry_delay = min(retry_delay * 2, self._retry_max)
                    if self.refusals >= self.max_refusals:
                        raise GatewayStopped(self.last_problem)
                more = limit is None or taken < limit
                if not more and not self._state.unsent:
                    break
                if deadline is not None and self._clock() >= deadline:
                    break
                wake = [next_sign] if more and latest else []
                if self._state.unsent:
                    wake.append(next_retry)
                if deadline is not None:
                    wake.append(deadline)
                waits: list[Awaitable[Any]] = [stop.wait()]
                if more and not latest:
                    waits.append(arrived.wait())
                delay = max(0.0, min(wake) - self._clock()) if wake else None
                await _first_of(waits, pump, delay)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return taken

    def _take(self, raw: RawReading, dry_run: bool, out: TextIO | None) -> bool:
        """Sign (or preview) one value; False when it is skipped."""
        try:
            if dry_run:
                print(json.dumps(self.preview(raw)), file=out, flush=True)
            else:
                self.sign(raw)
        except NotNewer as err:
            _LOGGER.debug("skipped a value: %s", err)
            return False
        except CounterWentBackwards as err:
            self.backwards += 1
            self.last_problem = str(err)
            _LOGGER.error("%s", err)
            if self.backwards >= self.max_refusals:
                raise GatewayStopped(str(err)) from err
            return False
        except ValueError as err:
            _LOGGER.error("skipped a value: %s", err)
            return False
        return True

    async def _pump(self, source: Source, on_reading: Callable[[RawReading], None]) -> None:
        """Read the source for ever: reconnect with backoff, log once when lost and once when back."""
        delay = self._retry_min
        while True:
            try:
                async for raw in source.readings():
                    if self._source_lost:
                        _LOGGER.info("source %s is back", source.name)
                        self._source_lost = False
                    delay = self._retry_min
                    on_reading(raw)
                raise SourceUnavailable("the source closed")
            except SourceUnavailable as err:
                if not self._source_lost:
                    self._source_lost = True
                    _LOGGER.warning("source %s lost (%s); no readings until it is back, retrying", source.name, err)
                else:
                    _LOGGER.debug("source %s still lost: %s", source.name, err)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._retry_max)


async def _first_of(waits: list[Awaitable[Any]], pump: asyncio.Task[None], seconds: float | None) -> None:
    """Wait until one of `waits` or the source task finishes, or `seconds` pass."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait([*tasks, pump], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
