"""A simulated smart meter: cumulative imported Wh from a load profile, signed, posted to an oracle.

The meter signs every reading itself (EIP-712, see `oracle.readings`), so the oracle that relays
it cannot alter it. Readings carry wall-clock timestamps (the contract rejects readings from the
future); the load profile runs on a simulated clock that may go faster (`speedup`), so a day of
household consumption can be replayed in a minute.

Library use (the demo and tests), without any network::

    meter = Meter(key, Domain(31337, contract), household_profile(seed=1))
    readings = meter.simulate(start=now - 3600, interval=60, count=60)

Command line (`energykart-meter --help`) posts readings to an oracle's `POST /v1/readings`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import is_address, to_checksum_address

from oracle.readings import MAX_WH, Domain, SignedReading, sign_reading

_LOGGER = logging.getLogger(__name__)

DEFAULT_ORACLE = "http://127.0.0.1:8787"
DEFAULT_INTERVAL = 60.0
KEY_ENV = "ENERGYKART_METER_KEY"
MAX_BATCH = 500  # readings per POST
MAX_UNSENT = 10_000  # older unsent readings beyond this are dropped: the newest carries the total
MIN_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 60.0
STATE_VERSION = 1
_BUCKET_SECONDS = 60  # profiles are piecewise constant over simulated minutes
_MINUTES_PER_DAY = 1440


class ConfigError(ValueError):
    """Configuration the user has to fix (bad key, profile, state file, ...)."""


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


def load_key(key: bytes | str) -> LocalAccount:
    """A meter account from a private key: 32 bytes, or hex with or without 0x. Never echoed."""
    try:
        account: LocalAccount = Account.from_key(key.strip() if isinstance(key, str) else key)
    except (ValueError, TypeError) as err:  # eth-keys and hexbytes raise either
        raise ConfigError("the meter key is not a valid secp256k1 private key (64 hex digits)") from err
    return account


def reading_from_json(data: Any) -> SignedReading:
    """Parse a reading in the API's JSON shape (as written by `SignedReading.to_json`)."""
    try:
        signature = bytes.fromhex(str(data["signature"]).removeprefix("0x"))
        meter = to_checksum_address(str(data["meter"]))
        cumulative_wh, timestamp = data["cumulativeWh"], data["timestamp"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a signed reading: {err}") from err
    if len(signature) != 65 or not isinstance(cumulative_wh, int) or not isinstance(timestamp, int):
        raise ValueError("not a signed reading: bad signature length or non-integer fields")
    return SignedReading(meter, cumulative_wh, timestamp, signature[64], signature[:32], signature[32:64])


@dataclass(frozen=True, slots=True)
class MeterState:
    """Where a meter is: its cumulative energy (milli-Wh, so fractions are not lost between
    readings), its last reading's timestamp and simulated time, and readings not yet delivered."""

    meter: ChecksumAddress
    cumulative_mwh: int
    timestamp: int | None = None
    sim_time: float | None = None
    unsent: tuple[SignedReading, ...] = ()

    @property
    def cumulative_wh(self) -> int:
        return self.cumulative_mwh // 1000

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "meter": self.meter,
            "cumulativeMilliWh": self.cumulative_mwh,
            "timestamp": self.timestamp,
            "simTime": self.sim_time,
            "unsent": [reading.to_json() for reading in self.unsent],
        }

    @classmethod
    def from_json(cls, data: Any) -> MeterState:
        try:
            if data["version"] != STATE_VERSION:
                raise ValueError(f"unsupported version {data['version']!r}")
            state = cls(
                meter=to_checksum_address(data["meter"]),
                cumulative_mwh=int(data["cumulativeMilliWh"]),
                timestamp=None if data["timestamp"] is None else int(data["timestamp"]),
                sim_time=None if data["simTime"] is None else float(data["simTime"]),
                unsent=tuple(reading_from_json(item) for item in data["unsent"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed meter state: {err}") from err
        if state.cumulative_mwh < 0 or (state.timestamp is None) != (state.sim_time is None):
            raise ValueError("malformed meter state: negative energy or half a last reading")
        return state


class StateFile:
    """The meter's state in a small JSON file, replaced atomically so a crash leaves the old or new."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> MeterState | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ConfigError(f"cannot read state file {self.path}: {err.strerror}") from err
        try:
            return MeterState.from_json(json.loads(text))
        except ValueError as err:
            raise ConfigError(f"state file {self.path} is not a meter state: {err}") from err

    def save(self, state: MeterState) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as out:
            json.dump(state.to_json(), out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)


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
    ) -> None:
        self._account = private_key if isinstance(private_key, LocalAccount) else load_key(private_key)
        if not (math.isfinite(speedup) and speedup > 0):
            raise ConfigError(f"speedup must be a positive number, got {speedup}")
        if not 0 <= start_wh <= MAX_WH:
            raise ConfigError(f"start Wh must be from 0 to {MAX_WH}, got {start_wh}")
        self.domain = domain
        self.profile = profile
        self.speedup = speedup
        self._clock = clock
        self._store = StateFile(state_file) if state_file is not None else None
        saved = self._store.load() if self._store is not None else None
        if saved is not None and saved.meter != self.address:
            raise ConfigError(f"state file {state_file} belongs to meter {saved.meter}, not {self.address}")
        self._state = saved or MeterState(meter=self.address, cumulative_mwh=start_wh * 1000)
        self._unreachable = False  # so an outage is logged once when lost and once when back

    @property
    def address(self) -> ChecksumAddress:
        return self._account.address

    @property
    def cumulative_wh(self) -> int:
        return self._state.cumulative_wh

    @property
    def last_timestamp(self) -> int | None:
        return self._state.timestamp

    @property
    def unsent(self) -> tuple[SignedReading, ...]:
        """Readings taken but not yet delivered to an oracle, oldest first."""
        return self._state.unsent

    def reading_at(self, timestamp: int) -> SignedReading:
        """Advance the meter to `timestamp` (Unix seconds), then sign and return its reading.

        The energy drawn since the previous reading follows the profile over the simulated span
        (`speedup` times the real one). The first reading is the baseline: no energy is added.
        """
        reading, state = self._advance(timestamp)
        self._commit(state)
        return reading

    def _advance(self, timestamp: int) -> tuple[SignedReading, MeterState]:
        last = self._state
        if last.timestamp is not None and timestamp <= last.timestamp:
            raise ValueError(f"timestamp {timestamp} is not after the last reading's ({last.timestamp})")
        if last.timestamp is None or last.sim_time is None:
            sim_time, added_mwh = float(timestamp), 0
        else:
            sim_time = last.sim_time + (timestamp - last.timestamp) * self.speedup
            added_mwh = math.floor(self.profile.energy_wh(last.sim_time, sim_time) * 1000)
        cumulative_mwh = min(last.cumulative_mwh + added_mwh, MAX_WH * 1000 + 999)
        reading = sign_reading(self._account.key, self.domain, cumulative_mwh // 1000, timestamp)
        return reading, replace(last, cumulative_mwh=cumulative_mwh, timestamp=timestamp, sim_time=sim_time)

    def simulate(self, start: int, interval: int, count: int) -> list[SignedReading]:
        """`count` readings at `start`, `start + interval`, ... (no clock, no network)."""
        if interval < 1:
            raise ValueError("interval must be at least one second")
        return [self.reading_at(start + i * interval) for i in range(count)]

    def take_reading(self) -> SignedReading:
        """A reading now (wall clock), queued for delivery."""
        now = int(self._clock())
        last = self._state.timestamp
        reading, state = self._advance(now if last is None else max(now, last + 1))
        unsent = (*state.unsent, reading)
        if len(unsent) > MAX_UNSENT:
            _LOGGER.warning("%d readings undelivered: dropping the oldest", len(unsent))
            unsent = unsent[-MAX_UNSENT:]
        self._commit(replace(state, unsent=unsent))
        return reading

    def _commit(self, state: MeterState) -> None:
        # Saved before anything is sent, so a restart never signs below what an oracle may have.
        if self._store is not None:
            self._store.save(state)
        self._state = state

    def _delivered(self, count: int) -> None:
        self._commit(replace(self._state, unsent=self._state.unsent[count:]))

    async def deliver(self, session: aiohttp.ClientSession, oracle_url: str, *, batch_size: int = MAX_BATCH) -> bool:
        """Post the unsent readings, oldest first. True when none are left; False when the oracle
        is unreachable or failing (the readings stay queued: call again later).

        A reading the oracle already has (409 stale) counts as delivered. One it refuses (400,
        e.g. a meter not registered) is logged and dropped: the next reading carries the total.
        """
        url = oracle_url.rstrip("/") + "/v1/readings"
        while self._state.unsent:
            batch = self._state.unsent[:batch_size]
            try:
                outcome = await self._post(session, url, batch)
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as err:
                if not self._unreachable:
                    self._unreachable = True
                    _LOGGER.warning("oracle %s unreachable (%s); keeping readings to retry", oracle_url, err)
                return False
            if self._unreachable:
                _LOGGER.info("oracle %s reachable again", oracle_url)
                self._unreachable = False
            if outcome == "too_large":
                if batch_size == 1:
                    _LOGGER.error("oracle refused a single reading as too large; dropping it")
                    self._delivered(1)
                batch_size = max(1, batch_size // 2)
                continue
            self._delivered(len(batch))
        return True

    async def _post(self, session: aiohttp.ClientSession, url: str, batch: Sequence[SignedReading]) -> str:
        """POST one batch; "done" when the oracle settled the fate of each, "too_large" on 413.
        Raises aiohttp.ClientError for transport errors and 5xx (retryable)."""
        body: dict[str, Any] = batch[0].to_json() if len(batch) == 1 else {"readings": [r.to_json() for r in batch]}
        async with session.post(url, json=body) as response:
            if response.status == 413:
                return "too_large"
            if response.status >= 500 or response.status in (404, 405, 408, 429):
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message=response.reason or ""
                )
            answer = await response.json(content_type=None)
        if len(batch) == 1:
            _log_result(batch[0], response.status, answer)
        else:
            results = answer.get("results", []) if isinstance(answer, dict) else []
            by_index = {item.get("index"): item for item in results if isinstance(item, dict)}
            for index, reading in enumerate(batch):
                item = by_index.get(index, {})
                _log_result(reading, 200 if item.get("status") == "accepted" else 400, item)
        return "done"

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
        deliver them, retrying with exponential backoff while the oracle is unreachable. With a
        count, it returns once all readings are delivered (or `stop` is set)."""
        if interval < 1:
            raise ConfigError("interval must be at least one second (timestamps are whole seconds)")
        stop = stop or asyncio.Event()
        taken = 0
        next_reading = self._clock()
        next_retry = 0.0
        retry_delay = MIN_RETRY_DELAY
        while not stop.is_set():
            more = count is None or taken < count
            if not more and not self._state.unsent:
                return
            now = self._clock()
            if more and now >= next_reading:
                last = self._state.timestamp
                if last is not None and int(now) <= last:
                    next_reading = last + 1.0  # the previous run's clock was ahead: wait for it
                else:
                    self.take_reading()
                    taken += 1
                    next_reading = max(next_reading + interval, now)  # no burst after a stall
            if self._state.unsent and self._clock() >= next_retry:
                if await self.deliver(session, oracle_url):
                    next_retry, retry_delay = 0.0, MIN_RETRY_DELAY
                else:
                    next_retry = self._clock() + retry_delay * random.uniform(0.8, 1.2)
                    retry_delay = min(retry_delay * 2, MAX_RETRY_DELAY)
            wake = [next_reading] if (count is None or taken < count) else []
            if self._state.unsent:
                wake.append(next_retry)
            if not wake:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, min(wake) - self._clock()))


def _log_result(reading: SignedReading, status: int, answer: Any) -> None:
    what = f"reading {reading.cumulative_wh} Wh @ {reading.timestamp}"
    error = answer.get("error") if isinstance(answer, dict) else None
    if status in (200, 202) and error is None:
        _LOGGER.info("%s accepted", what)
    elif status == 409 or error == "stale":
        _LOGGER.info("%s already delivered (stale)", what)
    else:
        detail = answer.get("detail", answer) if isinstance(answer, dict) else answer
        _LOGGER.error("%s rejected (%s): %s; dropped", what, error or status, detail)


# --- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energykart-meter",
        description="Simulate a smart meter: sign cumulative imported-energy readings (EIP-712) "
        "from a load profile and post them to an Energy-Kart oracle.",
        epilog=f"The meter key comes from --key-file or the {KEY_ENV} environment variable (hex); "
        "it is never printed. Exit status: 0 all readings delivered, 1 stopped (signal) with readings "
        "still undelivered (kept in the state file, if any), 2 bad configuration.",
    )
    parser.add_argument("--key-file", type=Path, help=f"file holding the meter's hex private key (else ${KEY_ENV})")
    parser.add_argument("--oracle", default=DEFAULT_ORACLE, help="oracle base URL (default: %(default)s)")
    parser.add_argument("--chain-id", type=int, required=True, help="chain id of the EIP-712 domain")
    parser.add_argument("--contract", required=True, help="EnergyMarket address of the EIP-712 domain")
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between readings, >= 1 (default: %(default)s)"
    )
    parser.add_argument(
        "--profile",
        default="household",
        help="load profile: household (daily curve), ev (evening charging block) or constant:<W> "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, help="profile seed, for reproducible runs (default: from the address)")
    parser.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="simulated seconds per real second, e.g. 1440 replays a day in a minute (default: %(default)s)",
    )
    parser.add_argument(
        "--state-file", type=Path, help="JSON file keeping the meter's state and unsent readings across restarts"
    )
    parser.add_argument("--count", type=int, help="stop after this many readings, once delivered (default: run on)")
    parser.add_argument(
        "--start-wh", type=int, default=0, help="cumulative Wh of a new meter (ignored when resuming a state file)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)"
    )
    return parser


@dataclass(frozen=True, slots=True)
class MeterConfig:
    account: LocalAccount
    domain: Domain
    oracle: str
    interval: float
    profile: LoadProfile
    speedup: float
    state_file: Path | None
    count: int | None
    start_wh: int
    log_level: str


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> MeterConfig:
    """Parse and validate the command line; exits with status 2 and a clear message on errors."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.key_file is not None:
            try:
                key_text = args.key_file.read_text()
            except OSError as err:
                raise ConfigError(f"cannot read --key-file {args.key_file}: {err.strerror}") from err
        elif environ.get(KEY_ENV):
            key_text = environ[KEY_ENV]
        else:
            raise ConfigError(f"no meter key: pass --key-file or set {KEY_ENV}")
        account = load_key(key_text)
        if not is_address(args.contract):
            raise ConfigError(f"--contract must be a 0x-prefixed 20-byte address, got {args.contract!r}")
        if args.chain_id <= 0:
            raise ConfigError(f"--chain-id must be positive, got {args.chain_id}")
        if not args.oracle.startswith(("http://", "https://")):
            raise ConfigError(f"--oracle must be an http:// or https:// URL, got {args.oracle!r}")
        if not (math.isfinite(args.interval) and args.interval >= 1):
            raise ConfigError(f"--interval must be at least 1 second, got {args.interval}")
        if not (math.isfinite(args.speedup) and args.speedup > 0):
            raise ConfigError(f"--speedup must be a positive number, got {args.speedup}")
        if args.count is not None and args.count < 1:
            raise ConfigError(f"--count must be at least 1, got {args.count}")
        if not 0 <= args.start_wh <= MAX_WH:
            raise ConfigError(f"--start-wh must be from 0 to {MAX_WH}, got {args.start_wh}")
        seed = args.seed if args.seed is not None else default_seed(account.address)
        profile = parse_profile(args.profile, seed)
    except ConfigError as err:
        parser.error(str(err))
    return MeterConfig(
        account=account,
        domain=Domain(args.chain_id, to_checksum_address(args.contract)),
        oracle=args.oracle.rstrip("/"),
        interval=args.interval,
        profile=profile,
        speedup=args.speedup,
        state_file=args.state_file,
        count=args.count,
        start_wh=args.start_wh,
        log_level=args.log_level,
    )


async def _run(config: MeterConfig, meter: Meter) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await meter.run(session, config.oracle, interval=config.interval, count=config.count, stop=stop)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv, os.environ)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        meter = Meter(
            config.account,
            config.domain,
            config.profile,
            speedup=config.speedup,
            start_wh=config.start_wh,
            state_file=config.state_file,
        )
    except ConfigError as err:
        _parser().error(str(err))
    _LOGGER.info(
        "meter %s, profile %s, %s Wh, posting to %s",
        meter.address,
        config.profile.spec,
        meter.cumulative_wh,
        config.oracle,
    )
    asyncio.run(_run(config, meter))
    if meter.unsent:
        _LOGGER.warning("stopped with %d readings undelivered", len(meter.unsent))
    sys.exit(1 if meter.unsent else 0)


if __name__ == "__main__":
    main()
