"""The relayer: each timestep, settle the newest unsettled reading of every meter on chain.

A settle transaction is signed and written to the store (with its nonce and raw bytes) before it
is broadcast, so after a crash the oracle finds it again: by its receipt when it was mined, by
rebroadcasting it when its nonce is still free, or by releasing its readings when the nonce went
to another transaction. Before sending, the chain's own last reading of each meter (meterOf, one
JSON-RPC batch) filters out readings another oracle instance has already settled.

A batch the node will not estimate (over the block gas limit, out of gas) is split down to single
readings, so a reading that cannot be settled waits for the next round alone, never holding back
the other meters' readings.

A settle transaction still unmined `replace_after` seconds after it was broadcast is replaced: the
same nonce and call, signed again with fees a quarter higher (or the node's current fees, if those
are higher still). Every earlier transaction of the batch is remembered, since any one of them may
be the one mined. With a fee ceiling (`--max-fee`) no transaction offers more than it: a first
send while the chain asks more goes out at the ceiling and waits until the base fee falls (a node
that will not hold it meanwhile gets it again each round), and a replacement is capped at the
ceiling, or left out (the transaction keeps waiting) when the ceiling is not 10 % above its fee.
A batch that has waited `STUCK_ROUNDS` rounds (for inclusion, or for its
confirmations) is logged once as a warning and shown by /healthz until it resolves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from web3.types import TxReceipt

from oracle.chain import ContractRejected, Fees, MarketClient, NodeRefused, SkipReason, gwei
from oracle.ingest import Ingest
from oracle.metrics import Metrics
from oracle.store import Batch, ReadingStore, StoredReading
from oracle.throttle import ThrottledWarnings
from oracle.transactions import GAS_MARGIN, TransactionSender

_LOGGER = logging.getLogger(__name__)
GAS_PER_READING = 12_000  # measured ~11.6k per packed reading (bench/gas.py), with a margin
GAS_PER_TX = 60_000  # intrinsic cost, calldata head, the ReadingsAccepted event
WARN_EVERY = 3600.0  # seconds between warnings about one meter whose reading cannot be sent
STUCK_ROUNDS = 3  # rounds a settle transaction may wait before it is reported
FEE_BUMP = 1.25  # a replacement offers this much more (nodes want at least 10 % more to replace)
MIN_BUMP_PERCENT = 10  # below --max-fee a replacement needs at least this much room, else it is not sent


@dataclass
class RelayReport:
    sent: int = 0  # readings sent in new settle transactions
    batches: int = 0
    settled: int = 0
    skipped: int = 0
    waiting: int = 0  # settle transactions not yet confirmed
    deferred: int = 0  # readings the node would not estimate: they wait for the next round
    replaced: int = 0  # settle transactions replaced with a higher fee


@dataclass(frozen=True, slots=True)
class WaitingSettle:
    """The settle transaction that has waited longest, as /healthz shows it."""

    tx_hash: str
    nonce: int
    rounds: int  # rounds it has been found waiting
    waiting_for: str  # "inclusion" (not mined yet), "fee ceiling" (not mined, held by --max-fee) or "confirmations"

    def to_json(self) -> dict[str, object]:
        return {"tx": self.tx_hash, "nonce": self.nonce, "rounds": self.rounds, "waitingFor": self.waiting_for}


class Relayer:
    def __init__(
        self,
        sender: TransactionSender,
        store: ReadingStore,
        ingest: Ingest,
        metrics: Metrics,
        gas_budget: int,
        wait_seconds: float,
        replace_after: float,
        max_fee: int | None = None,
    ) -> None:
        self._sender = sender
        self._client: MarketClient = sender.client
        self._store = store
        self._ingest = ingest
        self._metrics = metrics
        self._gas_budget = gas_budget
        self._wait_seconds = wait_seconds
        self._per_tx = max(1, (gas_budget - GAS_PER_TX) // GAS_PER_READING)
        self._deferred_warned: dict[str, float] = {}  # meter -> when its deferral was last warned about
        self._replace_after = replace_after
        self._max_fee = max_fee  # wei per gas; None: no ceiling
        self._fee_warnings = ThrottledWarnings(_LOGGER, every=WARN_EVERY)
        self._rounds_waited: dict[int, int] = {}  # open batch id -> rounds it has been found waiting
        self.waiting: WaitingSettle | None = None

    async def tick(self) -> RelayReport:
        report = RelayReport()
        await self.resolve_open(report)
        if report.waiting:
            return report  # one generation of batches at a time keeps nonces and meters simple
        candidates = self._store.newest_pending()
        if not candidates:
            return report
        views = await self._client.meters(sorted({c.reading.meter for c in candidates}))
        to_send: list[StoredReading] = []
        for candidate in candidates:
            view = views[candidate.reading.meter]
            if candidate.reading.timestamp <= view.last_timestamp:
                # Settled already, by an earlier run of ours or by another oracle: never re-send.
                self._store.resolve_covered(candidate.reading.meter, view.last_timestamp, view.last_wh)
                self._ingest.raise_floor(candidate.reading.meter, view.last_timestamp, view.last_wh)
            else:
                to_send.append(candidate)
        sent: list[Batch] = []
        for start in range(0, len(to_send), self._per_tx):
            sent += await self._send(to_send[start : start + self._per_tx], report)
        report.sent = len(to_send) - report.deferred
        report.batches = len(sent)
        for batch in sent:
            receipt = await self._sender.wait(batch.tx_hash, self._wait_seconds)
            if receipt is None:
                report.waiting += 1
            else:
                await self._apply(batch, batch.tx_hash, receipt, report)
        return report

    async def _send(self, chunk: Sequence[StoredReading], report: RelayReport) -> list[Batch]:
        """Sign, record, then broadcast one settle transaction. The chunk is split in halves when
        its estimate exceeds the gas budget (a reading that ends connections costs more than the
        average) or fails; a single reading whose estimate fails is deferred to the next round."""
        function = self._client.settle_call([c.reading.as_tuple() for c in chunk])
        try:
            estimate = await self._client.estimate(function, self._sender.signer.address)
        except (NodeRefused, ContractRejected) as err:
            # The node answered, so the fault is in the batch (settle skips bad readings rather
            # than revert, so a revert too means it ran out of gas); a lost connection
            # (ChainError) propagates and fails the round instead.
            if len(chunk) > 1:
                return await self._split(chunk, report)
            self._defer(chunk[0], err, report)
            return []
        if estimate > self._gas_budget and len(chunk) > 1:
            return await self._split(chunk, report)
        gas = min(int(estimate * GAS_MARGIN), max(self._gas_budget, estimate))
        fees = await self._client.fees()
        if self._max_fee is not None and fees.max_fee > self._max_fee:
            self._fee_warnings.warn(
                "max_fee_send",
                "settle: the chain asks a max fee of %s gwei, above --max-fee %s gwei: sent at %s gwei, "
                "it waits until the base fee falls",
                gwei(fees.max_fee), gwei(self._max_fee), gwei(self._max_fee),
            )  # fmt: skip
            fees = self._capped(fees)
        nonce, tx_hash, raw = await self._sender.sign(function, gas, fees)
        batch_id = self._store.record_batch(nonce, tx_hash, raw, [c.id for c in chunk])
        _LOGGER.info("settle: %d readings, nonce %d, tx %s", len(chunk), nonce, tx_hash)
        await self._broadcast(raw)
        for stored in chunk:
            if self._deferred_warned.pop(stored.reading.meter, None) is not None:
                _LOGGER.info("meter %s: its reading is sent again", stored.reading.meter)
        return [Batch(batch_id, nonce, tx_hash, raw, int(time.time()))]

    async def _split(self, chunk: Sequence[StoredReading], report: RelayReport) -> list[Batch]:
        half = len(chunk) // 2
        return [*await self._send(chunk[:half], report), *await self._send(chunk[half:], report)]

    def _defer(self, stored: StoredReading, err: NodeRefused | ContractRejected, report: RelayReport) -> None:
        """Leave a reading the node will not estimate pending; warn about its meter at most once per WARN_EVERY."""
        report.deferred += 1
        self._metrics.readings_deferred.inc()
        meter, now = stored.reading.meter, time.monotonic()
        last = self._deferred_warned.get(meter)
        warn = last is None or now - last >= WARN_EVERY
        if warn:
            self._deferred_warned[meter] = now
        _LOGGER.log(
            logging.WARNING if warn else logging.DEBUG,
            "meter %s: reading at %d not sent, the node will not estimate its settle (%s); retried next round",
            meter, stored.reading.timestamp, err,
        )  # fmt: skip

    async def resolve_open(self, report: RelayReport | None = None) -> None:
        """Settle transactions recorded but not confirmed (this run, or before a crash)."""
        report = report or RelayReport()
        open_batches = self._store.open_batches()
        waiting: list[WaitingSettle] = []
        if open_batches:
            mined_nonce = await self._client.nonce(self._sender.signer.address, "latest")
            ours = {b.nonce for b in open_batches}
            for batch in open_batches:
                mined = await self._mined(batch)
                if mined is not None:
                    tx_hash, receipt = mined
                    if await self._sender.deep_enough(receipt):
                        await self._apply(batch, tx_hash, receipt, report)
                        continue
                    waiting.append(self._still_waiting(batch, tx_hash, "confirmations", report))
                elif batch.nonce < mined_nonce or any(n not in ours for n in range(mined_nonce, batch.nonce)):
                    # Its nonce went to another transaction, or an earlier one of ours (a keeper
                    # transaction the node lost) left a gap it can never pass: send its readings anew.
                    _LOGGER.warning(
                        "settle tx %s (nonce %d) will not be mined; its readings wait again", batch.tx_hash, batch.nonce
                    )
                    self._store.drop_batch(batch.id)
                    self._sender.forget_nonces()
                    self._metrics.batches.labels("dropped").inc()
                else:
                    due = time.time() - batch.sent_at >= self._replace_after
                    replaced = await self._replace(batch) if due else None  # None also: --max-fee leaves no room
                    if replaced is not None:
                        tx_hash, taken = replaced
                        report.replaced += 1
                    else:
                        tx_hash, taken = batch.tx_hash, await self._broadcast(batch.raw_tx)  # the node may have lost it
                    waiting_for = "inclusion" if taken and (replaced or not due) else "fee ceiling"
                    waiting.append(self._still_waiting(batch, tx_hash, waiting_for, report))
        still_open = {b.id for b in self._store.open_batches()}
        self._rounds_waited = {i: n for i, n in self._rounds_waited.items() if i in still_open}
        self.waiting = max(waiting, key=lambda w: w.rounds, default=None)

    async def _mined(self, batch: Batch) -> tuple[str, TxReceipt] | None:
        """The transaction of the batch that was mined (the last one, or one it replaced), with its receipt."""
        for tx_hash in batch.hashes:
            receipt = await self._client.receipt(tx_hash)
            if receipt is not None:
                return tx_hash, receipt
        return None

    def _still_waiting(self, batch: Batch, tx_hash: str, waiting_for: str, report: RelayReport) -> WaitingSettle:
        report.waiting += 1
        rounds = self._rounds_waited.get(batch.id, 0) + 1
        self._rounds_waited[batch.id] = rounds
        if rounds == STUCK_ROUNDS:
            detail = (
                f"mined, waiting for {self._sender.confirmations} confirmation(s); does the chain make blocks?"
                if waiting_for == "confirmations"
                else "not mined yet, its fee held at --max-fee"
                if waiting_for == "fee ceiling"
                else "not mined yet"
            )
            _LOGGER.warning("settle tx %s (nonce %d) has waited %d rounds: %s", tx_hash, batch.nonce, rounds, detail)
        return WaitingSettle(tx_hash, batch.nonce, rounds, waiting_for)

    async def _replace(self, batch: Batch) -> tuple[str, bool] | None:
        """Sign the batch's transaction again with higher fees, record it, then broadcast it:
        (its hash, whether the node took it). None when --max-fee leaves no room for a replacement
        the node would take (10 % above the offered max fee): the transaction keeps waiting."""
        offered = self._client.fees_of(batch.raw_tx)
        current = await self._client.fees()
        priority = max(int(offered.priority_fee * FEE_BUMP) + 1, current.priority_fee)
        fees = Fees(max_fee=max(int(offered.max_fee * FEE_BUMP) + 1, current.max_fee, priority), priority_fee=priority)
        if self._max_fee is not None and fees.max_fee > self._max_fee:
            if self._max_fee * 100 < offered.max_fee * (100 + MIN_BUMP_PERCENT):
                self._fee_warnings.warn(
                    "max_fee_replace",
                    "settle tx %s (nonce %d) waits: not mined after %.0f s, but a replacement would offer a max fee "
                    "of %s gwei, above --max-fee %s gwei (it offers %s gwei)",
                    batch.tx_hash, batch.nonce, self._replace_after, gwei(fees.max_fee), gwei(self._max_fee),
                    gwei(offered.max_fee),
                )  # fmt: skip
                return None
            fees = self._capped(fees)
        tx_hash, raw = self._client.resign(batch.raw_tx, self._sender.signer, fees)
        self._store.replace_batch_tx(batch.id, tx_hash, raw)
        self._metrics.batches.labels("replaced").inc()
        _LOGGER.warning(
            "settle tx %s (nonce %d) not mined after %.0f s: replaced by %s, max fee %d -> %d wei/gas%s",
            batch.tx_hash, batch.nonce, self._replace_after, tx_hash, offered.max_fee, fees.max_fee,
            " (the --max-fee ceiling)" if fees.max_fee == self._max_fee else "",
        )  # fmt: skip
        return tx_hash, await self._broadcast(raw)

    def _capped(self, fees: Fees) -> Fees:
        """`fees` with neither fee above --max-fee."""
        if self._max_fee is None or fees.max_fee <= self._max_fee:
            return fees
        return Fees(max_fee=self._max_fee, priority_fee=min(fees.priority_fee, self._max_fee))

    async def _broadcast(self, raw: bytes) -> bool:
        """Send a settle transaction: whether the node took it. Under --max-fee a node may refuse
        one whose max fee is below its base fee (anvil does; geth keeps it in its pool): that one
        waits, and is sent again next round. Any other refusal propagates (the round fails)."""
        try:
            await self._client.send_raw(raw)
        except NodeRefused as err:
            if self._max_fee is None:
                raise
            offered, base = self._client.fees_of(raw).max_fee, await self._client.base_fee()
            if offered * 8 >= base * 9:  # the next block may charge up to 1/8 more than the last one
                raise
            _LOGGER.debug(
                "settle tx at %s gwei refused while the base fee is %s gwei (%s); sent again next round",
                gwei(offered), gwei(base), err,
            )  # fmt: skip
            return False
        return True

    async def _apply(self, batch: Batch, tx_hash: str, tx_receipt: TxReceipt, report: RelayReport) -> None:
        readings = self._store.batch_readings(batch.id)
        gas_used = int(tx_receipt["gasUsed"])
        self._metrics.gas_used.inc(gas_used)
        if tx_receipt["status"] != 1:
            _LOGGER.error("settle tx %s reverted; its %d readings wait again", tx_hash, len(readings))
            self._metrics.batches.labels("reverted").inc()
            self._store.complete_batch(batch.id, gas_used, [], [], [r.id for r in readings])
            return
        outcome = self._client.settle_outcome(tx_receipt)
        by_key: dict[tuple[str, int], StoredReading] = {(r.reading.meter, r.reading.timestamp): r for r in readings}
        settled = [by_key[(m, ts)].id for m, _wh, ts in outcome.accepted if (m, ts) in by_key]
        skipped: list[tuple[int, str]] = []
        retry: list[int] = []
        not_newer: list[StoredReading] = []
        for meter, _wh, ts, reason in outcome.skipped:
            stored = by_key.get((meter, ts))
            if stored is None:
                continue
            self._metrics.readings_skipped.labels(reason.name).inc()
            if reason is SkipReason.FUTURE_TIMESTAMP:
                retry.append(stored.id)  # valid once the chain's clock catches up
            elif reason is SkipReason.NOT_NEWER:
                not_newer.append(stored)
            else:
                skipped.append((stored.id, reason.name))
        views = await self._client.meters(sorted({r.reading.meter for r in not_newer})) if not_newer else {}
        covered = []
        for stored in not_newer:
            view = views[stored.reading.meter]
            if stored.reading.timestamp <= view.last_timestamp:
                retry.append(stored.id)  # resolve_covered below marks it onchain or superseded
                covered.append((stored.reading.meter, view.last_timestamp, view.last_wh))
            else:
                skipped.append((stored.id, SkipReason.NOT_NEWER.name))
        accounted = set(settled) | {i for i, _ in skipped} | set(retry)
        retry += [r.id for r in readings if r.id not in accounted]
        self._store.complete_batch(batch.id, gas_used, settled, skipped, retry)
        for meter, ts, wh in covered:
            self._store.resolve_covered(meter, ts, wh)
        self._metrics.batches.labels("mined").inc()
        self._metrics.readings_settled.inc(len(settled))
        report.settled += len(settled)
        report.skipped += len(skipped)
        _LOGGER.info("settle tx %s: %d settled, %d skipped, gas %d", tx_hash, len(settled), len(skipped), gas_used)
