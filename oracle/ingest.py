"""The ingest path of `POST /v1/readings`: check each reading, store the accepted ones, answer.

Checks, cheapest first: schema and ranges, timestamp not in the future (beyond the contract's clock
skew), meter registered, strictly newer than the meter's last accepted reading (and cumulative not
lower), then the EIP-712 signature. Readings of a batch are checked in order, so a batch may carry
several readings of one meter, oldest first. The accepted ones are stored durably before the answer
(the store's group commit shares one transaction among concurrent requests); until that commit
succeeds nothing is counted as accepted.

Signature recovery is the ingest's cost. It runs in worker threads (`RECOVERY_THREADS`, chunks of
`RECOVERY_CHUNK` readings; libsecp256k1 runs without the GIL), while the event loop parses and
answers other requests; a large batch takes its turns with the others, chunk by chunk. The checks
that read or change the meters' state (newer than the last accepted reading, then the signer) run
on the event loop after the recovery, without awaiting in between: a reading that passes them is
its meter's newest at once (`_unstored`), before its commit, so a concurrent request cannot slip in
the same or an older reading of that meter; if the commit fails, it is forgotten again. A meter's
public key is remembered once it has been seen to hash to the meter's address, which saves a hash
per reading.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address

from oracle.metrics import Metrics
from oracle.readings import MAX_TIMESTAMP, MAX_WH, Domain, InvalidReading, address_of, recover_public_keys
from oracle.registry import ChainView
from oracle.store import ReadingStore

MAX_CLOCK_SKEW = 300  # the contract's MAX_CLOCK_SKEW: later readings would be skipped on chain
# More threads than this gain nothing: the GIL-bound rest of the ingest is then the limit.
RECOVERY_THREADS = min(4, os.process_cpu_count() or 1)
RECOVERY_CHUNK = 32  # readings per job of a worker thread: a large batch spreads over all of them
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_FIELDS = {"meter", "cumulativeWh", "timestamp", "signature"}

type _Candidate = tuple[ChecksumAddress, int, int, bytes]  # meter, cumulativeWh, timestamp, signature


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
        # Per meter, the newest reading that passed its checks and waits for its commit.
        self._unstored: dict[str, tuple[int, int]] = {}
        self._checksums: dict[str, ChecksumAddress] = {}
        self._recovery = ThreadPoolExecutor(RECOVERY_THREADS, thread_name_prefix="recover")

    def close(self) -> None:
        self._recovery.shutdown()

    def raise_floor(self, meter: str, timestamp: int, cumulative_wh: int) -> None:
        if timestamp > self.last.get(meter, (0, 0))[0]:
            self.last[meter] = (timestamp, cumulative_wh)

    async def submit(self, items: Sequence[Any]) -> list[Outcome]:
        """Check `items` (decoded JSON), store the accepted ones durably, and say what happened to each."""
        outcomes: list[Outcome | None] = [None] * len(items)
        candidates: list[tuple[int, _Candidate]] = []  # (index in items, reading) to recover
        latest_allowed = self._chain.now() + MAX_CLOCK_SKEW
        for index, item in enumerate(items):
            try:
                candidates.append((index, self._check_fields(item, latest_allowed)))
            except _Reject as rejected:
                outcomes[index] = rejected.rejection
        keys = await self._recover([candidate for _, candidate in candidates])
        # From here to the insert, nothing is awaited: each reading's state checks and its
        # acceptance are one step for every other request.
        accepted: list[_Candidate] = []
        for (index, (meter, wh, ts, signature)), key in zip(candidates, keys, strict=True):
            try:
                self._check_newer(meter, wh, ts)
                self._check_signer(meter, key)
            except _Reject as rejected:
                outcomes[index] = rejected.rejection
                continue
            self._unstored[meter] = (ts, wh)
            accepted.append((meter, wh, ts, signature))
            outcomes[index] = Accepted(meter, ts)
        results = [outcome for outcome in outcomes if outcome is not None]
        for outcome in results:
            if isinstance(outcome, Rejection):
                self._metrics.readings_rejected.labels(outcome.error).inc()
        if accepted:
            stored = self._store.insert_readings(accepted)
            stored.add_done_callback(lambda done: self._stored(accepted, done))
            await asyncio.shield(stored)  # a request cancelled meanwhile still has its readings recorded
        return results

    async def _recover(self, candidates: list[_Candidate]) -> list[bytes | InvalidReading]:
        """Each candidate's public key (or why it has none), recovered in the worker threads. A
        request queues at most one chunk per thread at a time, so a large batch shares the threads
        with the requests that arrive after it instead of holding them for its whole length."""
        loop = asyncio.get_running_loop()
        chunks = [candidates[i : i + RECOVERY_CHUNK] for i in range(0, len(candidates), RECOVERY_CHUNK)]
        keys: list[bytes | InvalidReading] = []
        for first in range(0, len(chunks), RECOVERY_THREADS):
            recovered = await asyncio.gather(
                *(
                    loop.run_in_executor(self._recovery, recover_public_keys, self._separator, chunk)
                    for chunk in chunks[first : first + RECOVERY_THREADS]
                )
            )
            keys.extend(key for chunk_keys in recovered for key in chunk_keys)
        return keys

    def _stored(self, readings: list[_Candidate], done: asyncio.Future[None]) -> None:
        """The commit of `readings` ended: stored ones become their meters' last accepted."""
        if not done.cancelled() and done.exception() is None:
            for meter, wh, ts, _ in readings:
                self.raise_floor(meter, ts, wh)
            self._metrics.readings_accepted.inc(len(readings))
        for meter, wh, ts, _ in readings:
            if self._unstored.get(meter) == (ts, wh):
                del self._unstored[meter]

    def _newest(self, meter: str) -> tuple[int, int]:
        """The meter's newest accepted (timestamp, cumulativeWh), stored or waiting for its commit."""
        stored = self.last.get(meter, (0, 0))
        unstored = self._unstored.get(meter)
        return unstored if unstored is not None and unstored[0] > stored[0] else stored

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

    def _check_fields(self, item: Any, latest_allowed: int) -> _Candidate:
        """The checks that need no signature: schema, ranges, time, registration, newer (as far as
        known before the recovery; checked again after it)."""
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
        self._check_newer(meter, wh, ts)  # spares the recovery of a replayed reading
        return meter, wh, ts, bytes.fromhex(sig_text[2:])

    def _check_newer(self, meter: str, wh: int, ts: int) -> None:
        last_ts, last_wh = self._newest(meter)
        if ts <= last_ts:
            raise _Reject(409, "stale", f"timestamp {ts} is not after the last accepted reading of {meter} ({last_ts})")
        if wh < last_wh:
            raise _Reject(409, "stale", f"cumulativeWh {wh} is below the last accepted reading of {meter} ({last_wh})")

    def _check_signer(self, meter: str, key: bytes | InvalidReading) -> None:
        """The contract's rules (checked by the recovery): v 27 or 28, s in the lower half; and the
        signer is the meter."""
        if isinstance(key, InvalidReading):
            raise _Reject(400, key.reason, key.detail)
        if self._public_keys.get(meter) == key:
            return
        if address_of(key) != bytes.fromhex(meter[2:]):
            raise _Reject(400, "bad_signature", f"signature is not by meter {meter} for this chain and contract")
        self._public_keys[meter] = key
