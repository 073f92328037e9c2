"""The ingest path of `POST /v1/readings`: check each reading, store the accepted ones, answer.

Checks, cheapest first: schema and ranges, timestamp not in the future (beyond the contract's clock
skew), meter registered, strictly newer than the meter's last accepted reading (and cumulative not
lower), then the EIP-712 signature. Readings of a batch are checked in order, so a batch may carry
several readings of one meter, oldest first. The accepted ones are inserted in one SQLite
transaction before the answer; until that commit succeeds nothing is counted as accepted.

Signature recovery (oracle.readings.recover_public_key) is the ingest's cost; a meter's public key
is remembered once it has been seen to hash to the meter's address, which saves a hash per reading.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address

from oracle.metrics import Metrics
from oracle.readings import MAX_TIMESTAMP, MAX_WH, Domain, InvalidReading, SignedReading, address_of, recover_public_key
from oracle.registry import ChainView
from oracle.store import ReadingStore

MAX_CLOCK_SKEW = 300  # the contract's MAX_CLOCK_SKEW: later readings would be skipped on chain
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_FIELDS = {"meter", "cumulativeWh", "timestamp", "signature"}


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int  # HTTP status for a single reading
    error: str
    detail: str


@dataclass(frozen=True, slots=True)
class Accepted:
    meter: ChecksumAddress
    timestamp: int


type Outcome = Accepted | Rejection


class _Reject(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(status, error, detail)


class Ingest:
    def __init__(self, domain: Domain, store: ReadingStore, chain: ChainView, metrics: Metrics) -> None:
        self._separator = domain.separator()
        # Each meter's public key once it has been seen to hash to the meter's address: later
        # readings compare keys and skip that hash.
        self._public_keys: dict[str, bytes] = {}
        self._store = store
        self._chain = chain
        self._metrics = metrics
        # Per meter, the newest accepted (timestamp, cumulativeWh): stored ones, raised to the
        # chain's own last reading at start-up so readings the chain already passed are stale.
        self.last: dict[str, tuple[int, int]] = store.last_accepted()
        self._checksums: dict[str, ChecksumAddress] = {}

    def raise_floor(self, meter: str, timestamp: int, cumulative_wh: int) -> None:
        if timestamp > self.last.get(meter, (0, 0))[0]:
            self.last[meter] = (timestamp, cumulative_wh)

    def submit(self, items: Sequence[Any]) -> list[Outcome]:
        """Check `items` (decoded JSON), store the accepted ones durably, and say what happened to each."""
        outcomes: list[Outcome] = []
        accepted: list[SignedReading] = []
        working: dict[str, tuple[int, int]] = {}  # this batch's accepted readings, until committed
        latest_allowed = self._chain.now() + MAX_CLOCK_SKEW
        for item in items:
            try:
                reading = self._check(item, working, latest_allowed)
            except _Reject as rejected:
                outcomes.append(rejected.rejection)
                continue
            working[reading.meter] = (reading.timestamp, reading.cumulative_wh)
            accepted.append(reading)
            outcomes.append(Accepted(reading.meter, reading.timestamp))
        if accepted:
            self._store.insert_readings(accepted)
            self.last.update(working)
            self._metrics.readings_accepted.inc(len(accepted))
        for outcome in outcomes:
            if isinstance(outcome, Rejection):
                self._metrics.readings_rejected.labels(outcome.error).inc()
        return outcomes

    def _checksum(self, text: str) -> ChecksumAddress:
        cached = self._checksums.get(text)
        if cached is None:
            if not _ADDRESS.fullmatch(text):
                raise _Reject(400, "invalid_reading", "meter must be a 0x-prefixed 20-byte hex address")
            cached = to_checksum_address(text)
            mixed_case = text[2:] != text[2:].lower() and text[2:] != text[2:].upper()
            if mixed_case and cached != text:
                raise _Reject(400, "invalid_reading", "meter address has a wrong EIP-55 checksum")
            if len(self._checksums) < 1_000_000:  # bounded: addresses are attacker-chosen
                self._checksums[text] = cached
        return cached

    def _check(self, item: Any, working: dict[str, tuple[int, int]], latest_allowed: int) -> SignedReading:
        if not isinstance(item, dict):
            raise _Reject(400, "invalid_reading", "a reading must be a JSON object")
        if item.keys() != _FIELDS:
            missing = sorted(_FIELDS - item.keys())
            extra = sorted(item.keys() - _FIELDS)
            problem = f"missing {', '.join(missing)}" if missing else f"unknown field(s) {', '.join(extra)}"
            raise _Reject(
                400, "invalid_reading", f"a reading has exactly meter, cumulativeWh, timestamp, signature: {problem}"
            )
        meter_text, wh, ts, sig_text = item["meter"], item["cumulativeWh"], item["timestamp"], item["signature"]
        if not isinstance(meter_text, str):
            raise _Reject(400, "invalid_reading", "meter must be a string (0x-prefixed address)")
        if type(wh) is not int or not 0 <= wh <= MAX_WH:
            raise _Reject(400, "invalid_reading", f"cumulativeWh must be an integer from 0 to {MAX_WH}")
        if type(ts) is not int or not 0 < ts <= MAX_TIMESTAMP:
            raise _Reject(
                400, "invalid_reading", f"timestamp must be an integer of Unix seconds from 1 to {MAX_TIMESTAMP}"
            )
        if not isinstance(sig_text, str) or not _SIGNATURE.fullmatch(sig_text):
            raise _Reject(400, "invalid_reading", "signature must be 0x-prefixed hex of 65 bytes (r, s, v)")
        meter = self._checksum(meter_text)
        if ts > latest_allowed:
            raise _Reject(
                400,
                "invalid_reading",
                f"timestamp {ts} is in the future (now is about {latest_allowed - MAX_CLOCK_SKEW})",
            )
        if meter not in self._chain.registered:
            raise _Reject(400, "unknown_meter", f"meter {meter} is not registered on the market")
        last_ts, last_wh = working.get(meter) or self.last.get(meter, (0, 0))
        if ts <= last_ts:
            raise _Reject(409, "stale", f"timestamp {ts} is not after the last accepted reading of {meter} ({last_ts})")
        if wh < last_wh:
            raise _Reject(409, "stale", f"cumulativeWh {wh} is below the last accepted reading of {meter} ({last_wh})")
        signature = bytes.fromhex(sig_text[2:])
        self._verify(meter, wh, ts, signature)
        return SignedReading(
            meter=meter, cumulative_wh=wh, timestamp=ts, v=signature[64], r=signature[:32], s=signature[32:64]
        )

    def _verify(self, meter: str, wh: int, ts: int, signature: bytes) -> None:
        """The contract's rules: v 27 or 28, s in the lower half, signer is the meter."""
        try:
            key = recover_public_key(self._separator, meter, wh, ts, signature)
        except InvalidReading as err:
            raise _Reject(400, err.reason, err.detail) from err
        if self._public_keys.get(meter) == key:
            return
        if address_of(key) != bytes.fromhex(meter[2:]):
            raise _Reject(400, "bad_signature", f"signature is not by meter {meter} for this chain and contract")
        self._public_keys[meter] = key
