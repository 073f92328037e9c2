"""Wires the oracle together: chain client, store, ingest, watcher, relayer, keeper, HTTP API.

Start-up: reach the node (retrying with backoff), check that the address holds an EnergyMarket,
bind the database to this chain and contract, load the meters and closed connections from the
chain's history, resolve settle transactions left by a previous run, then serve HTTP. Two loops
run afterwards: the watcher polls the node every few seconds, and each timestep a round settles
readings (relayer) and finalizes / releases (keeper). A failed round is retried with exponential
backoff; the HTTP API keeps accepting readings meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import asdict
from typing import Any

import aiohttp
from aiohttp import web

from oracle.api import ApiContext, build_app
from oracle.chain import ChainError, ContractRejected, Currency, MarketClient
from oracle.config import Config, ConfigError
from oracle.ingest import Ingest
from oracle.keeper import Keeper
from oracle.metrics import Metrics
from oracle.readings import Domain
from oracle.registry import ChainView
from oracle.relayer import Relayer
from oracle.store import ReadingStore, StoreMismatchError
from oracle.transactions import TransactionSender
from oracle.watcher import Watcher

_LOGGER = logging.getLogger(__name__)
POLL_SECONDS = 2.0  # watcher: new meters become known within this
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class OracleService:
    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.client = MarketClient(session, config.rpc_url, config.contract)
        self.metrics = Metrics()
        self.view = ChainView()
        self._round_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.timestep = config.timestep or 0

    async def _reach_node(self) -> tuple[int, int, Currency]:
        """Chain id and the contract's timestep, waiting for the node as long as it takes."""
        delay = MIN_BACKOFF
        while True:
            try:
                chain_id = await self.client.chain_id()
                if not await self.client.is_market():
                    raise ConfigError(
                        f"--contract: no EnergyMarket at {self.config.contract} on chain {chain_id}; "
                        "check the address and --rpc-url"
                    )
                return chain_id, await self.client.timestep(), await self.client.currency()
            except ChainError as err:
                _LOGGER.warning("node at %s not reachable (%s); retrying in %.0f s", self.config.rpc_url, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    async def start(self) -> None:
        chain_id, grace, currency = await self._reach_node()
        self.timestep = self.config.timestep or grace
        try:
            self.store = ReadingStore(self.config.db)
            self.store.bind(chain_id, self.config.contract)
        except StoreMismatchError as err:
            raise ConfigError(f"--db: {self.config.db} belongs to another market: {err}; use another file") from err
        except OSError as err:
            raise ConfigError(f"--db: cannot open {self.config.db}: {err}") from err
        domain = Domain(chain_id, self.config.contract)
        self.ingest = Ingest(domain, self.store, self.view, self.metrics)
        sender = TransactionSender(self.client, self.config.relayer_key.account, self.config.confirmations)
        self.keeper = Keeper(sender, self.metrics, grace)
        wait_seconds = max(5.0, min(float(self.timestep), 120.0))
        self.relayer = Relayer(sender, self.store, self.ingest, self.metrics, self.config.gas_budget, wait_seconds)
        self.watcher = Watcher(self.client, self.view, self.ingest, self.keeper, self.metrics)
        await self._until_done(self.watcher.load, "loading the market's history")
        await self._until_done(self.relayer.resolve_open, "resolving settle transactions of the last run")

        identity = {
            "chainId": chain_id,
            "contract": self.config.contract,
            "relayer": self.config.relayer_key.address,
            "timestep": self.timestep,
            "currency": {"address": currency.address, "symbol": currency.symbol, "decimals": currency.decimals},
        }
        ctx = ApiContext(
            ingest=self.ingest,
            store=self.store,
            view=self.view,
            metrics=self.metrics,
            max_body=self.config.max_body,
            identity=identity,
            tick=self.tick if self.config.dev else None,
        )
        self._runner = web.AppRunner(build_app(ctx), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        print(f"energykart-oracle listening on http://{host}:{port}", file=sys.stderr, flush=True)
        _LOGGER.info("relayer %s, timestep %d s, %d confirmation(s)", identity["relayer"], self.timestep,
                     self.config.confirmations)  # fmt: skip
        self._tasks = [
            asyncio.create_task(self._watch_loop(), name="watcher"),
            asyncio.create_task(self._round_loop(), name="rounds"),
        ]

    async def _until_done(self, step: Any, what: str) -> None:
        delay = MIN_BACKOFF
        while True:
            try:
                await step()
                return
            except ChainError as err:
                _LOGGER.warning("%s failed (%s); retrying in %.0f s", what, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    async def _watch_loop(self) -> None:
        while True:
            try:
                await self.watcher.poll()
            except (ChainError, ContractRejected) as err:
                _LOGGER.debug("poll failed: %s", err)
            await asyncio.sleep(POLL_SECONDS)

    async def _round_loop(self) -> None:
        delay = MIN_BACKOFF
        while True:
            try:
                await self.tick()
            except (ChainError, ContractRejected) as err:
                self.metrics.rpc_errors.inc()
                _LOGGER.warning("round failed (%s); retrying in %.0f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, float(self.timestep), MAX_BACKOFF)
                continue
            delay = MIN_BACKOFF
            await asyncio.sleep(self.timestep)

    async def tick(self) -> dict[str, Any]:
        """One round now: refresh from the chain, settle, then keeper actions. Rounds never overlap."""
        async with self._round_lock:
            await self.watcher.poll()
            relay = await self.relayer.tick()
            keeper = await self.keeper.tick(self.view.head_timestamp)
            return {"relayer": asdict(relay), "keeper": asdict(keeper)}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
        if hasattr(self, "store"):
            self.store.close()
