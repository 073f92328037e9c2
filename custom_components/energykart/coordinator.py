"""Data update coordinator: one batched JSON-RPC round trip per update, plus the new logs in ranges."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from eth_typing import ChecksumAddress
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryError
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed
from web3.exceptions import ContractLogicError, Web3Exception

from .client import EnergyKartClient, LogRead, MarketEvent, MarketRead
from .const import (
    CONF_ACCOUNT,
    CONF_CONTRACT_ADDRESS,
    CONF_CURRENCY,
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

type EnergyKartConfigEntry = ConfigEntry[EnergyKartCoordinator]


@dataclass(frozen=True, slots=True)
class EnergyKartData:
    """The market as seen by one account after an update; money in the currency's smallest unit.

    The totals (energy sold and bought, earnings, spending) count ended connections from the logs:
    they are None until the logs since the entry's start block are read.
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


@dataclass(slots=True)
class _History:
    """What the logs told so far: who is in which connection, and how ended ones finished."""

    roles: dict[int, tuple[str, str]] = field(default_factory=dict)
    ended: dict[int, tuple[int, int]] = field(default_factory=dict)


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
        self._cursor: int = entry.data[CONF_START_BLOCK] - 1  # the last block whose logs were read
        self._handled: dict[tuple[str, ...], int] = {}  # logs already handled, by key: their block
        self._history = _History()
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
        """Read the market's currency, once: it is fixed at deployment."""
        entry = self.config_entry
        try:
            currency = await self.client.load_currency()
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

    async def _async_update_data(self) -> EnergyKartData:
        try:
            read = await self._read_market()
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
            logs = await self._read_logs(read.block)
        except (EnergyKartError, Web3Exception) as err:
            raise UpdateFailed(
                translation_domain=DOMAIN, translation_key="update_failed", translation_placeholders={"error": str(err)}
            ) from err

        live = set(read.open_ids)
        my_offers = {i: o for i, o in offers.items() if i in live and o.status == Status.BIDDING}
        live_connections = {i: c for i, c in connections.items() if i in live}
        for connection in connections.values():
            self._history.roles[connection.id] = (connection.seller, connection.buyer)
            self._meters[connection.id] = connection.meter
            if connection.status >= Status.COMPLETED:
                self._history.ended[connection.id] = (connection.delivered_wh, connection.paid_wei)
        self._offers = set(my_offers)
        self._connections = set(live_connections)
        events = self._new_events(logs)
        self._read_history(events)
        if self._fire_after is None:
            self._fire_after = read.block
        self._fire_events(tuple(event for event in events if event.block > self._fire_after), connections)
        history_read = logs.last_block >= read.block
        if history_read:
            self._fire_after = -1  # even in blocks a reorganisation or a node's restart put back
        async_sync_devices(
            self.hass, self.config_entry, {i: self.role_in(connection) for i, connection in live_connections.items()}
        )
        return self._summarize(read, my_offers, live_connections, history_read)

    async def _read_market(self) -> MarketRead:
        """The market at the latest block, with the account's open offers and connections read by id."""
        try:
            return await self.client.read_market(sorted(self._offers), sorted(self._connections))
        except ContractLogicError:
            # An offer or connection read by id is gone (a reorganisation undid it): read the ids afresh.
            self._offers.clear()
            self._connections.clear()
            return await self.client.read_market((), ())

    async def _read_logs(self, head: int) -> LogRead:
        """The logs after the last read block, up to `head` (in several updates when they are many).

        The logs of the REORG_WINDOW blocks before it are read again: a reorganisation replaces
        recent blocks, and the logs of the new ones must be seen too. A chain that went back by more
        than that (a node restarted from an older state) is read again from the window before its head.
        """
        start_block = self.config_entry.data[CONF_START_BLOCK]
        return await self.client.read_logs(max(start_block, min(self._cursor, head) - REORG_WINDOW), head)

    def _new_events(self, logs: LogRead) -> tuple[MarketEvent, ...]:
        """The logs not handled before; remember them while they are inside the window."""
        new = tuple(event for event in logs.events if event.key not in self._handled)
        self._handled.update((event.key, event.block) for event in new)
        self._cursor = logs.last_block
        oldest = logs.last_block - REORG_WINDOW
        self._handled = {key: block for key, block in self._handled.items() if block >= oldest}
        return new

    def _read_history(self, events: tuple[MarketEvent, ...]) -> None:
        for event in events:
            args = event.args
            if event.name == "ConnectionOpened" and self.account in (args["seller"], args["buyer"]):
                self._history.roles[args["id"]] = (args["seller"], args["buyer"])
                self._meters[args["id"]] = args["meter"]
            elif event.name == "ConnectionEnded" and args["id"] in self._history.roles:
                self._history.ended[args["id"]] = (args["deliveredWh"], args["paidWei"])

    def role_in(self, connection: Connection) -> str:
        """This account's role in one of its connections: buyer or seller."""
        return "buyer" if connection.buyer == self.account else "seller"

    def _role(self, connection_id: int) -> str | None:
        seller, buyer = self._history.roles.get(connection_id, ("", ""))
        if seller == self.account:
            return "seller"
        if buyer == self.account:
            return "buyer"
        return None

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
        totals: dict[str, list[int]] = {"seller": [0, 0], "buyer": [0, 0]}
        for connection_id in self._history.roles:
            role = self._role(connection_id)
            if role is None:
                continue
            if connection_id in connections:
                delivered, paid = connections[connection_id].delivered_wh, connections[connection_id].paid_wei
            elif connection_id in self._history.ended:
                delivered, paid = self._history.ended[connection_id]
            else:
                continue
            totals[role][0] += delivered
            totals[role][1] += paid
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
            energy_sold_wh=totals["seller"][0] if history_read else None,
            energy_bought_wh=totals["buyer"][0] if history_read else None,
            earnings_wei=totals["seller"][1] if history_read else None,
            spending_wei=totals["buyer"][1] if history_read else None,
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
