"""Wires the oracle together: chain client, store, ingest, watcher, relayer, keeper, HTTP API.

Start-up, each step logged: open the database (its folder must exist), listen on HTTP (`/healthz`
answers "starting" from here on), reach the node (retrying with backoff), check that the address
holds an EnergyMarket, bind the database to this chain and contract, find the market's deployment
block, load the meters and closed connections from the history from there, resolve settle
transactions left by a previous run, then serve. A problem the operator has to fix (the database
folder, the port, the contract) is a ConfigError, found before the history is loaded.

Three loops run afterwards: the watcher polls the node every few seconds, each timestep a round
settles readings (relayer) and finalizes / releases (keeper), and every few minutes retention
deletes old readings that are done. A failed round is retried with exponential backoff; the HTTP
API keeps accepting readings meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import aiohttp
from aiohttp import web

from oracle.api import ApiContext, Running, build_app
from oracle.chain import ChainError, ContractRejected, MarketClient, UndecodableAnswer
from oracle.config import Config, ConfigError
from oracle.ingest import Ingest
from oracle.keeper import Keeper
from oracle.metrics import Metrics
from oracle.readings import Domain
from oracle.registry import ChainView
from oracle.relayer import Relayer
from oracle.store import PRUNE_CHUNK, ReadingStore, StoreMismatchError
from oracle.throttle import ClientFaultFilter, ThrottledWarnings
from oracle.transactions import TransactionSender
from oracle.watcher import Watcher

_LOGGER = logging.getLogger(__name__)
_HTTP_LOGGER = logging.getLogger("oracle.http")  # aiohttp's server errors, client faults throttled
POLL_SECONDS = 2.0  # watcher: new meters become known within this
PRUNE_EVERY = 300.0  # seconds between retention passes
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
DEPLOYMENT_BLOCK_KEY = "deployment_block"


class OracleService:
    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.client = MarketClient(session, config.rpc_url, config.contract)
        self.metrics = Metrics()
        self.view = ChainView()
        self._round_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._store: ReadingStore | None = None
        self._ingest: Ingest | None = None
        self.timestep = config.timestep or 0

    @property
    def store(self) -> ReadingStore:
        assert self._store is not None, "the store opens first in start()"
        return self._store

    async def start(self) -> None:
        config = self.config
        _LOGGER.info(
            "starting: node %s, contract %s, database %s, relayer %s",
            config.rpc_url, config.contract, config.db, config.relayer_key.address,
        )  # fmt: skip
        self._store = self._open_store()
        identity: dict[str, Any] = {"contract": config.contract, "relayer": config.relayer_key.address}
        ctx = ApiContext(
            store=self.store,
            metrics=self.metrics,
            max_body=config.max_body,
            identity=identity,
            tick=self.tick if config.dev else None,
        )
        await self._listen(ctx)

        chain_id, grace, currency = await self._reach_node()
        self.timestep = config.timestep or grace
        try:
            self.store.bind(chain_id, config.contract)
        except StoreMismatchError as err:
            raise ConfigError(f"--db: {config.db} belongs to another market: {err}; use another file") from err
        confirmations = await self._confirmations()
        start_block = await self._until_done(self._start_block, "finding the market's deployment block")

        domain = Domain(chain_id, config.contract)
        ingest = self._ingest = Ingest(domain, self.store, self.view, self.metrics)
        sender = TransactionSender(self.client, config.relayer_key.account, confirmations)
        self.keeper = Keeper(sender, self.metrics, grace, config.max_fee)
        wait_seconds = max(5.0, min(float(self.timestep), 120.0))
        self.relayer = Relayer(
            sender, self.store, ingest, self.metrics, config.gas_budget, wait_seconds, config.replace_after,
            config.max_fee,
        )  # fmt: skip
        self.watcher = Watcher(self.client, self.view, ingest, self.keeper, self.metrics, start_block)
        identity.update(
            chainId=chain_id,
            timestep=self.timestep,
            currency={"address": currency.address, "symbol": currency.symbol, "decimals": currency.decimals},
        )
        await self._until_done(self.watcher.load, "loading the market's history")
        await self._until_done(self.relayer.resolve_open, "resolving settle transactions of the last run")

        ctx.running = Running(ingest=ingest, view=self.view, waiting_settle=lambda: self.relayer.waiting)
        self._tasks = [
            asyncio.create_task(self._watch_loop(), name="watcher"),
            asyncio.create_task(self._round_loop(), name="rounds"),
        ]
        if config.retention:
            self._tasks.append(asyncio.create_task(self._prune_loop(), name="retention"))
        _LOGGER.info(
            "ready: chain %d, %d meters, timestep %d s, %d confirmation(s), retention %s",
            chain_id, len(self.view.registered), self.timestep, confirmations,
            f"{config.retention} s" if config.retention else "off",
        )  # fmt: skip

    def _open_store(self) -> ReadingStore:
        db = self.config.db
        if not db.parent.is_dir():
            raise ConfigError(f"--db: the folder {db.parent} of {db} does not exist; create it or give another path")
        try:
            return ReadingStore(db)
        except (OSError, sqlite3.Error) as err:
            raise ConfigError(f"--db: cannot open {db}: {err}") from err

    async def _listen(self, ctx: ApiContext) -> None:
        """Serve HTTP now: /healthz answers "starting" while the history loads."""
        http_logger = _HTTP_LOGGER
        if not any(isinstance(f, ClientFaultFilter) for f in http_logger.filters):
            http_logger.addFilter(ClientFaultFilter(ThrottledWarnings(http_logger)))
        self._runner = web.AppRunner(build_app(ctx), access_log=None, logger=http_logger)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as err:
            raise ConfigError(
                f"--listen: cannot listen on {self.config.host}:{self.config.port}: {err.strerror or err}"
            ) from err
        host, port = self._runner.addresses[0][:2]
        _LOGGER.info("listening on http://%s:%d (starting: /healthz answers 503 until ready)", host, port)

    async def _reach_node(self) -> tuple[int, int, Any]:
        """Chain id, the contract's timestep and currency, waiting for the node as long as it takes."""
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
            except UndecodableAnswer as err:
                raise ConfigError(
                    f"--contract: {self.config.contract} answers with data that is not an EnergyMarket's "
                    f"({str(err).splitlines()[0][:120]}); check the address and --rpc-url"
                ) from err
            except ChainError as err:
                _LOGGER.warning("node at %s not reachable (%s); retrying in %.0f s", self.config.rpc_url, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    async def _confirmations(self) -> int:
        """The configured confirmations, or 0 on a node that mines a block only for a transaction
        (anvil's or hardhat's automine): no block would ever come on top of a settle there."""
        wanted = self.config.confirmations
        if wanted and await self._until_done(self.client.automine, "asking the node how it mines") is True:
            _LOGGER.info(
                "the node mines a block only for each transaction (automine): a settle counts once mined, "
                "not after --confirmations %d", wanted,
            )  # fmt: skip
            return 0
        return wanted

    async def _start_block(self) -> int:
        """--start-block, else the deployment block kept in the database, else found on the chain
        (and kept). 0 when the node holds no state that far back."""
        if self.config.start_block is not None:
            return self.config.start_block
        kept = self.store.get_meta(DEPLOYMENT_BLOCK_KEY)
        if kept is not None:
            return int(kept)
        head, _ = await self.client.head()
        found = await self.client.deployment_block(head)
        if found is None:
            _LOGGER.warning(
                "the node keeps no state old enough to find the market's deployment block: reading its history "
                "from block 0 (give --start-block to skip that)"
            )
            return 0
        _LOGGER.info("market deployed in block %d: its history is read from there", found)
        self.store.set_meta(DEPLOYMENT_BLOCK_KEY, str(found))
        return found

    async def _until_done[T](self, step: Callable[[], Awaitable[T]], what: str) -> T:
        delay = MIN_BACKOFF
        while True:
            try:
                return await step()
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

    async def _prune_loop(self) -> None:
        while True:
            await self.prune()
            await asyncio.sleep(PRUNE_EVERY)

    async def prune(self) -> int:
        """Delete the readings retention lets go, a chunk at a time (the API answers in between)."""
        older_than = int(time.time()) - self.config.retention
        total = 0
        while True:
            deleted = self.store.prune(older_than)
            total += deleted
            if deleted < PRUNE_CHUNK:
                break
            await asyncio.sleep(0)
        self.metrics.readings_pruned.inc(total)
        self.metrics.db_bytes.set(self.store.size_bytes())
        if total:
            _LOGGER.info("retention: %d readings done before %d deleted", total, older_than)
        return total

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
        if self._ingest is not None:
            self._ingest.close()
        if self._store is not None:
            self._store.close()
