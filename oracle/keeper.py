"""The keeper: finalizes offers whose bidding ended and releases closed connections after their
grace window, so no user has to. Each action is estimated first: another oracle instance may have
done it already, and the estimate then fails with the contract's error instead of costing gas.
An action the node refuses (estimate or send) is counted as failed and tried again next tick; the
others of the tick go ahead.

Under a fee ceiling (`--max-fee`) an action waits while the chain asks more than the ceiling: it is
counted as held and tried again next tick. Keeper actions are not urgent, and one sent below the
chain's fee would wait in the pool, holding the relayer's settles (later nonces) behind it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from web3.contract.async_contract import AsyncContractFunction

from oracle.chain import ContractRejected, MarketClient, NodeRefused, Status, gwei
from oracle.metrics import Metrics
from oracle.throttle import ThrottledWarnings
from oracle.transactions import GAS_MARGIN, TransactionSender

_LOGGER = logging.getLogger(__name__)
PAGE = 100  # unfinalized offers looked at per dueOffers call
RECEIPT_TIMEOUT = 60.0
HELD_WARN_EVERY = 3600.0  # seconds between warnings that the fee ceiling holds keeper actions


@dataclass
class KeeperReport:
    finalized: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)


class Keeper:
    def __init__(
        self, sender: TransactionSender, metrics: Metrics, grace_seconds: int, max_fee: int | None = None
    ) -> None:
        self._sender = sender
        self._client: MarketClient = sender.client
        self._metrics = metrics
        self._grace = grace_seconds  # the contract's timestep
        self._max_fee = max_fee  # wei per gas; None: no ceiling
        self._held_warnings = ThrottledWarnings(_LOGGER, every=HELD_WARN_EVERY)
        self.closed: dict[int, int] = {}  # closed connection id -> closedAt, from ConnectionClosed

    async def track_closed(self, connection_id: int, closed_at: int, *, check: bool) -> None:
        """Follow a closed connection until it is released; `check` skips ones already ended."""
        if check and await self._client.connection_status(connection_id) is not Status.CLOSED:
            return
        self.closed[connection_id] = closed_at

    async def tick(self, head_timestamp: int) -> KeeperReport:
        report = KeeperReport()
        for offer_id in await self._due_offers(head_timestamp):
            if await self._act("finalize", offer_id, self._client.finalize_call(offer_id)):
                report.finalized.append(offer_id)
        for connection_id, closed_at in sorted(self.closed.items()):
            if head_timestamp <= closed_at + self._grace:
                continue
            outcome = await self._act("release", connection_id, self._client.release_call(connection_id))
            if outcome:
                report.released.append(connection_id)
            if outcome or await self._client.connection_status(connection_id) is not Status.CLOSED:
                del self.closed[connection_id]
        return report

    async def _due_offers(self, head_timestamp: int) -> list[int]:
        due: list[int] = []
        after = 0
        while True:
            try:
                page, after = await self._client.due_offers(after, PAGE)
            except ContractRejected:
                break  # the page's anchor was finalized meanwhile; the rest waits for the next tick
            due += [offer.id for offer in page if offer.bidding_ends <= head_timestamp]
            if after == 0:
                return due
        return due

    async def _act(self, action: str, item_id: int, function: AsyncContractFunction) -> bool:
        """Estimate, sign, send and wait for one action on offer / connection `item_id`: whether it
        was done. A node that cannot be reached (ChainError) fails the whole tick instead."""
        try:
            estimate = await self._client.estimate(function, self._sender.signer.address)
        except ContractRejected as rejected:
            _LOGGER.debug("%s %d skipped: %s", action, item_id, rejected.name)
            self._metrics.keeper_actions.labels(action, "not_needed").inc()
            return False
        except NodeRefused as err:
            return self._failed(action, item_id, f"the node will not estimate it ({err})")
        fees = await self._client.fees()
        if self._max_fee is not None and fees.max_fee > self._max_fee:
            self._held_warnings.warn(
                "max_fee",
                "keeper: the chain asks a max fee of %s gwei, above --max-fee %s gwei: finalize and release "
                "wait until it falls",
                gwei(fees.max_fee), gwei(self._max_fee),
            )  # fmt: skip
            _LOGGER.debug("%s %d held by --max-fee", action, item_id)
            self._metrics.keeper_actions.labels(action, "held").inc()
            return False
        _nonce, tx_hash, raw = await self._sender.sign(function, int(estimate * GAS_MARGIN), fees)
        try:
            await self._client.send_raw(raw)
        except NodeRefused as err:
            self._sender.forget_nonces()  # the node did not take the nonce: the next transaction gets it
            return self._failed(action, item_id, f"the node refused tx {tx_hash} ({err})")
        # Inclusion is enough: a keeper action lost to a reorg is simply done again next tick.
        receipt = await self._sender.wait(tx_hash, RECEIPT_TIMEOUT, confirmations=0)
        ok = receipt is not None and receipt["status"] == 1
        self._metrics.keeper_actions.labels(action, "done" if ok else "failed").inc()
        _LOGGER.info("%s %d: tx %s %s", action, item_id, tx_hash, "done" if ok else "not confirmed")
        return ok

    def _failed(self, action: str, item_id: int, why: str) -> bool:
        _LOGGER.warning("%s %d failed, tried again next tick: %s", action, item_id, why)
        self._metrics.keeper_actions.labels(action, "failed").inc()
        return False
