"""Data update coordinator: one batched JSON-RPC round trip per update, plus the new logs in ranges.

The log cursor and the running totals are kept in a `Store` per config entry, so a restart reads
only the blocks it has not read, and the totals survive it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from eth_typing import ChecksumAddress
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryError
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.storage import Store
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed
from web3.exceptions import ContractLogicError, Web3Exception

from .client import EnergyKartClient, MarketRead
from .const import (
    CONF_ACCOUNT,
    CONF_CONTRACT_ADDRESS,
    CONF_CURRENCY,
    CONF_DEPLOYMENT_BLOCK,
    CONF_PRIVATE_KEY,
    CONF_RPC_URL,
    CONF_SCAN_INTERVAL,
    CONF_START_BLOCK,
    DEFAULT_SCAN_INTERVAL,
    DOMAIN,
    EVENT_CONNECTION_CLOSED,
    EVENT_OFFER_AWARDED,
    EVENT_OFFER_CREATED,
    EVENT_OUTBID,
    EVENT_SETTLED,
    LOGGER,
    REORG_WINDOW,
)
from .contract import Connection, Offer, Status
from .currency import Currency
from .devices import async_sync_devices
from .errors import EnergyKartConnectionError, EnergyKartError, UnsupportedCurrencyError, WrongContractError
from .history import Ledger, LogRead, MarketEvent

type EnergyKartConfigEntry = ConfigEntry[EnergyKartCoordinator]

STORAGE_VERSION = 1
# The history is saved at most this often (and when the entry unloads): a crash loses at most the
# blocks read since, which the next start reads again; the totals stay exact either way.
SAVE_SECONDS = 60


def history_store(hass: HomeAssistant, entry_id: str) -> Store[dict[str, Any]]:
    """Where an entry's log cursor and running totals are kept."""
    return Store(hass, STORAGE_VERSION, f"{DOMAIN}.{entry_id}.history")


@dataclass(frozen=True, slots=True)
class EnergyKartData:
    """The market as seen by one account after an update; money in the currency's smallest unit.

    The totals (energy sold and bought, earnings, spending) count the account's connections since
    the market's deployment: they are None until its logs are read.
    """

    account: str
    block: int
    balance_wei: int
    gas_balance_wei: int
    credit_wei: int
    escrow_wei: int
    open_offers: tuple[Offer, ...]
    my_offers: dict[int, Offer]
    connections: dict[int, Connection]
    energy_sold_wh: int | None
    energy_bought_wh: int | None
    earnings_wei: int | None
    spending_wei: int | None


class EnergyKartCoordinator(DataUpdateCoordinator[EnergyKartData]):
    """Polls the market for one config entry."""

    config_entry: EnergyKartConfigEntry

    def __init__(self, hass: HomeAssistant, entry: EnergyKartConfigEntry) -> None:
        seconds = entry.options.get(CONF_SCAN_INTERVAL)
        super().__init__(
            hass,
            LOGGER,
            config_entry=entry,
            name=DOMAIN,
            update_interval=timedelta(seconds=seconds) if seconds else DEFAULT_SCAN_INTERVAL,
        )
        self.client = EnergyKartClient(
            async_get_clientsession(hass),
            entry.data[CONF_RPC_URL],
            entry.data[CONF_CONTRACT_ADDRESS],
            entry.data[CONF_ACCOUNT],
            entry.data.get(CONF_PRIVATE_KEY),
        )
        self.account: ChecksumAddress = self.client.account
        self._store = history_store(hass, entry.entry_id)
        self._ledger = Ledger.starting_at(0)  # replaced by the stored one, or one from the deployment, at setup
        self._start = 0  # the first block of the history
        self._save_after = 0.0  # no save is pending after this time (the event loop's clock)
        self._handled: dict[tuple[str, ...], int] = {}  # logs already handled, by key: their block
        self._offers: set[int] = set()
        self._connections: set[int] = set()
        self._meters: dict[int, str] = {}
        # Events fire for the logs of blocks after this one: none until the first update, then
        # those after its block (the logs up to it are history), and every new one once that is read.
        self._fire_after: int | None = None

    @property
    def currency(self) -> Currency:
        return self.client.currency

    async def _async_setup(self) -> None:
        """Read the market's currency, once: it is fixed at deployment; and where the history stands."""
        entry = self.config_entry
        try:
            currency = await self.client.load_currency()
            await self._load_history()
        except EnergyKartConnectionError as err:
            raise UpdateFailed(
                translation_domain=DOMAIN, translation_key="update_failed", translation_placeholders={"error": str(err)}
            ) from err
        except WrongContractError as err:
            raise ConfigEntryError(
                translation_domain=DOMAIN,
                translation_key="wrong_contract",
                translation_placeholders={"contract": entry.data[CONF_CONTRACT_ADDRESS]},
            ) from err
        except UnsupportedCurrencyError as err:
            raise ConfigEntryError(
                translation_domain=DOMAIN,
                translation_key="unsupported_currency",
                translation_placeholders={"token": err.token},
            ) from err
        if entry.data.get(CONF_CURRENCY) != asdict(currency):  # entries made before currencies were shown
            self.hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_CURRENCY: asdict(currency)})

    async def _load_history(self) -> None:
        """The stored history of this entry; else one from the block the market was deployed at."""
        entry = self.config_entry
        stored = await self._store.async_load()
        if stored is not None and stored.get("market") == entry.unique_id:
            self._start = stored["start"]
            self._ledger = Ledger.from_dict(stored["ledger"])
            return
        self._start = await self._deployment_block()
        self._ledger = Ledger.starting_at(self._start)

    async def _deployment_block(self) -> int:
        """The block the market was deployed at, found once and kept in the entry.

        On a node without the state of old blocks it cannot be found: the history is read from the
        oldest block known to hold the market (the one the entry was set up at, or the oldest whose
        state the node keeps), with a warning.
        """
        entry = self.config_entry
        if (known := entry.data.get(CONF_DEPLOYMENT_BLOCK)) is not None:
            return int(known)
        setup_block = entry.data.get(CONF_START_BLOCK)
        block, exact = await self.client.deployment_block(
            setup_block if setup_block is not None else await self.client.block_number()
        )
        if exact:
            self.hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_DEPLOYMENT_BLOCK: block})
        else:
            LOGGER.warning(
                "The node at %s keeps no state of blocks before %s, so the block the market %s was deployed at "
                "is unknown: its history (and the totals) start at block %s. A node with the whole state (an "
                "archive node: most hosted providers) reads it all",
                entry.data[CONF_RPC_URL],
                block,
                entry.data[CONF_CONTRACT_ADDRESS],
                block,
            )
        return block

    async def _async_update_data(self) -> EnergyKartData:
        ledger = self._ledger
        try:
            read = await self._read_market(ledger.cursor if ledger.cursor_hash is not None else None)
            offers = dict(read.offers)
            connections = dict(read.connections)
            unseen = [
                record_id
                for record_id in read.open_ids
                if record_id not in connections
                and (record_id not in offers or offers[record_id].status >= Status.ACTIVE)
            ]
            if unseen:
                more_offers, more_connections = await self.client.read_records(unseen)
                offers.update(more_offers)
                connections.update(more_connections)
            first = ledger.first_block(self._start, read.block, read.checked_hash)
            live_from = read.block + 1 if self._fire_after is None else self._fire_after + 1
            logs = await self.client.read_logs(first, read.block, live_from)
        except (EnergyKartError, Web3Exception) as err:
            raise UpdateFailed(
                translation_domain=DOMAIN, translation_key="update_failed", translation_placeholders={"error": str(err)}
            ) from err

        live = set(read.open_ids)
        my_offers = {i: o for i, o in offers.items() if i in live and o.status == Status.BIDDING}
        live_connections = {i: c for i, c in connections.items() if i in live}
        ledger.read(first, logs.events, self.account)
        for connection in connections.values():
            self._meters[connection.id] = connection.meter
            if connection.status < Status.COMPLETED:
                ledger.roles[connection.id] = (connection.seller, connection.buyer)
        self._offers = set(my_offers)
        self._connections = set(live_connections)
        events = self._new_events(logs)
        self._remember_meters(events)
        if self._fire_after is None:
            self._fire_after = read.block
        self._fire_events(tuple(event for event in events if event.block > self._fire_after), connections)
        # After the events fired: folding forgets the roles in connections that ended long enough ago.
        ledger.advance(logs.last_block, read.block_hash if logs.last_block == read.block else None)
        self._save_history()
        history_read = logs.last_block >= read.block
        if history_read:
            self._fire_after = -1  # even in blocks a reorganisation or a node's restart put back
        async_sync_devices(
            self.hass, self.config_entry, {i: self.role_in(connection) for i, connection in live_connections.items()}
        )
        return self._summarize(read, my_offers, live_connections, history_read)

    async def _read_market(self, check_block: int | None) -> MarketRead:
        """The market at the latest block, with the account's open offers and connections read by id
        (and the hash of `check_block`: the block the logs were read to, when it was the head)."""
        try:
            return await self.client.read_market(sorted(self._offers), sorted(self._connections), check_block)
        except ContractLogicError:
            # An offer or connection read by id is gone (a reorganisation undid it): read the ids afresh.
            self._offers.clear()
            self._connections.clear()
            return await self.client.read_market((), (), check_block)

    def _save_history(self) -> None:
        """Save the history soon: at most once every SAVE_SECONDS, so that polls do not wear the disk."""
        now = self.hass.loop.time()
        if now >= self._save_after:
            self._store.async_delay_save(self._stored_history, SAVE_SECONDS)
            self._save_after = now + SAVE_SECONDS

    def _stored_history(self) -> dict[str, Any]:
        return {"market": self.config_entry.unique_id, "start": self._start, "ledger": self._ledger.as_dict()}

    async def async_shutdown(self) -> None:
        """Save the history now: the entry unloads (or Home Assistant stops)."""
        await super().async_shutdown()
        if self.data is not None:  # the history was read at least once
            await self._store.async_save(self._stored_history())

    def _new_events(self, logs: LogRead) -> tuple[MarketEvent, ...]:
        """The logs not handled before; remember them while they are inside the window."""
        new = tuple(event for event in logs.events if event.key not in self._handled)
        self._handled.update((event.key, event.block) for event in new)
        oldest = logs.last_block - REORG_WINDOW
        self._handled = {key: block for key, block in self._handled.items() if block >= oldest}
        return new

    def _remember_meters(self, events: tuple[MarketEvent, ...]) -> None:
        for event in events:
            args = event.args
            if event.name == "ConnectionOpened" and self.account in (args["seller"], args["buyer"]):
                self._meters[args["id"]] = args["meter"]

    def role_in(self, connection: Connection) -> str:
        """This account's role in one of its connections: buyer or seller."""
        return "buyer" if connection.buyer == self.account else "seller"

    def _role(self, connection_id: int) -> str | None:
        return self._ledger.role(connection_id, self.account)

    def _fire_events(self, events: tuple[MarketEvent, ...], connections: dict[int, Connection]) -> None:
        entry_id = self.config_entry.entry_id
        bus = self.hass.bus
        currency = self.currency
        for event in events:
            args = event.args
            if event.name == "OfferCreated":
                bus.async_fire(
                    EVENT_OFFER_CREATED,
                    {
                        "config_entry_id": entry_id,
                        "offer_id": args["id"],
                        "mine": args["seller"] == self.account,
                        "energy_kwh": args["energyWh"] / 1000,
                        "start_price_per_kwh": currency.value(args["startPricePerKWh"]),
                        "currency": currency.symbol,
                        "bidding_ends": args["biddingEnds"],
                    },
                )
            elif event.name == "Outbid" and args["bidder"] == self.account:
                bus.async_fire(
                    EVENT_OUTBID,
                    {
                        "config_entry_id": entry_id,
                        "offer_id": args["id"],
                        "refund": currency.value(args["refundWei"]),
                        "currency": currency.symbol,
                    },
                )
            elif event.name == "ConnectionOpened" and (role := self._role(args["id"])):
                bus.async_fire(
                    EVENT_OFFER_AWARDED,
                    {
                        "config_entry_id": entry_id,
                        "offer_id": args["id"],
                        "role": role,
                        "price_per_kwh": currency.value(args["pricePerKWh"]),
                        "currency": currency.symbol,
                        "energy_kwh": args["capWh"] / 1000,
                    },
                )
            elif event.name == "ReadingsAccepted":
                meters = {f"{reading >> 96:040x}" for reading in args["readings"]}
                for connection_id, meter in self._meters.items():
                    connection = connections.get(connection_id)
                    if connection and meter[2:].lower() in meters and (role := self._role(connection_id)):
                        self._fire_settled(connection_id, role, connection.delivered_wh, connection.paid_wei)
            elif event.name == "ConnectionEnded" and (role := self._role(args["id"])):
                self._fire_settled(args["id"], role, args["deliveredWh"], args["paidWei"], final=True)
            elif event.name == "ConnectionClosed" and (role := self._role(args["id"])):
                bus.async_fire(
                    EVENT_CONNECTION_CLOSED,
                    {"config_entry_id": entry_id, "connection_id": args["id"], "role": role},
                )

    def _fire_settled(
        self, connection_id: int, role: str, delivered_wh: int, paid_wei: int, final: bool = False
    ) -> None:
        self.hass.bus.async_fire(
            EVENT_SETTLED,
            {
                "config_entry_id": self.config_entry.entry_id,
                "connection_id": connection_id,
                "role": role,
                "delivered_kwh": delivered_wh / 1000,
                "paid": self.currency.value(paid_wei),
                "currency": self.currency.symbol,
                "final": final,
            },
        )

    def _summarize(
        self, read: MarketRead, my_offers: dict[int, Offer], connections: dict[int, Connection], history_read: bool
    ) -> EnergyKartData:
        totals = self._ledger.totals(
            (connection.id, self.role_in(connection), connection.delivered_wh, connection.paid_wei)
            for connection in connections.values()
            if connection.status < Status.COMPLETED
        )
        return EnergyKartData(
            account=self.account,
            block=read.block,
            balance_wei=read.balance_wei,
            gas_balance_wei=read.gas_balance_wei,
            credit_wei=read.credit_wei,
            escrow_wei=read.escrow_wei,
            open_offers=read.open_offers,
            my_offers=my_offers,
            connections=connections,
            energy_sold_wh=totals.sold_wh if history_read else None,
            energy_bought_wh=totals.bought_wh if history_read else None,
            earnings_wei=totals.earnings_wei if history_read else None,
            spending_wei=totals.spending_wei if history_read else None,
        )

    def describe_offer(self, offer: Offer) -> dict[str, Any]:
        """An offer as actions and attributes show it (prices in the currency per kWh)."""
        currency = self.currency
        return {
            "offer_id": offer.id,
            "mine": offer.seller == self.account,
            "energy_kwh": offer.energy_wh / 1000,
            "start_price_per_kwh": currency.value(offer.start_price),
            "highest_bid_per_kwh": currency.value(offer.highest_price) if offer.highest_price else None,
            "min_next_bid_per_kwh": currency.value(offer.min_next_bid),
            "bidding_ends": offer.bidding_ends,
        }
