"""Follows the chain: head block, and the market events the oracle caches (meters registered or
revoked, connections closed). Loaded at start-up from the market's history, from its deployment
block on (nothing of the market can be older), then polled."""

from __future__ import annotations

import logging
import time

from oracle.chain import MarketClient
from oracle.ingest import Ingest
from oracle.keeper import Keeper
from oracle.metrics import Metrics
from oracle.registry import ChainView

_LOGGER = logging.getLogger(__name__)
EVENTS = ("MeterRegistered", "MeterRevoked", "ConnectionClosed")


class Watcher:
    def __init__(
        self,
        client: MarketClient,
        view: ChainView,
        ingest: Ingest,
        keeper: Keeper,
        metrics: Metrics,
        start_block: int = 0,
    ) -> None:
        self._client = client
        self._start_block = start_block
        self._view = view
        self._ingest = ingest
        self._keeper = keeper
        self._metrics = metrics
        self._next_block = 0

    async def load(self) -> None:
        """Read the market's history: every meter ever registered (its current state from meterOf)
        and the connections closed but not yet released."""
        head, head_ts = await self._client.head()
        logs = await self._client.logs(self._start_block, head, EVENTS)
        meters = sorted({log.args["meter"] for log in logs if log.name != "ConnectionClosed"})
        views = await self._client.meters(meters)
        self._view.registered = {m for m, v in views.items() if v.registered}
        for meter, view in views.items():
            # Readings the chain has passed are stale for the ingest, whoever settled them.
            self._ingest.raise_floor(meter, view.last_timestamp, view.last_wh)
        self._keeper.closed.clear()
        for log in logs:
            if log.name == "ConnectionClosed":
                await self._keeper.track_closed(int(log.args["id"]), int(log.args["closedAt"]), check=True)
        self._next_block = head + 1
        self._seen(head, head_ts)
        _LOGGER.info("history from block %d to %d: %d registered meters, %d closed connections to release",
                     self._start_block, head, len(self._view.registered), len(self._keeper.closed))  # fmt: skip

    async def poll(self) -> None:
        """Apply the events of new blocks; a chain that went backwards (a reset dev node) is reloaded."""
        try:
            head, head_ts = await self._client.head()
            if head < self._next_block - 1:
                _LOGGER.warning("the chain went back from block %d to %d; reloading", self._next_block - 1, head)
                await self.load()
                return
            if head >= self._next_block:
                for log in await self._client.logs(self._next_block, head, EVENTS):
                    if log.name == "MeterRegistered":
                        self._view.registered.add(log.args["meter"])
                        _LOGGER.info("meter %s registered (block %d)", log.args["meter"], log.block_number)
                    elif log.name == "MeterRevoked":
                        self._view.registered.discard(log.args["meter"])
                        _LOGGER.info("meter %s revoked (block %d)", log.args["meter"], log.block_number)
                    else:
                        await self._keeper.track_closed(int(log.args["id"]), int(log.args["closedAt"]), check=False)
                self._next_block = head + 1
        except Exception:
            self.lost()
            raise
        self._seen(head, head_ts)

    def _seen(self, head: int, head_ts: int) -> None:
        if not self._view.chain_up:
            _LOGGER.info("node reachable, head block %d", head)
        self._view.chain_up = True
        self._view.head_block = head
        self._view.head_timestamp = head_ts
        self._view.last_poll = time.monotonic()
        self._metrics.chain_up.set(1)
        self._metrics.head_block.set(head)

    def lost(self) -> None:
        if self._view.chain_up:
            _LOGGER.warning("node unreachable; readings are still accepted and settle once it is back")
        self._view.chain_up = False
        self._metrics.chain_up.set(0)
