"""Data update coordinator: one batched JSON-RPC round trip per update, plus the new logs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from eth_typing import ChecksumAddress
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed
from web3.exceptions import ContractLogicError, Web3Exception, Web3RPCError

from .client import EnergyKartClient, MarketEvent, MarketRead
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
from .errors import EnergyKartConnectionError, EnergyKartError, UnsupportedCurrencyError, WrongContractError

type EnergyKartConfigEntry = ConfigEntry[EnergyKartCoordinator]


@dataclass(frozen=True, slots=True)
class EnergyKartData:
    """The market as seen by one account after an update; money in the currency's smallest unit."""

    account: str
    block: int
    balance_wei: int
    gas_balance_wei: int
    credit_wei: int
    escrow_wei: int
    open_offers: tuple[Offer, ...]
    my_offers: dict[int, Offer]
    connections: dict[int, Connection]
    energy_sold_wh: int
    energy_bought_wh: int
    earnings_wei: int
    spending_wei: int


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
        self._head: int = entry.data[CONF_START_BLOCK] - 1
        self._handled: dict[tuple[str, ...], int] = {}  # logs already handled, by key: their block
        self._history = _History()
        self._offers: set[int] = set()
        self._connections: set[int] = set()
        self._meters: dict[int, str] = {}
        self._replaying = True  # the first update reads past logs without firing events

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
        events = self._new_events(read)
        self._read_history(events)
        if not self._replaying:
            self._fire_events(events, connections)
        self._replaying = False
        data = self._summarize(read, my_offers, live_connections)
        self._remove_stale_devices(set(live_connections))
        return data

    async def _read_market(self) -> MarketRead:
        """Read the market and the logs of the last blocks.

        The logs of the last REORG_WINDOW blocks are read again in every update: a reorganisation
        replaces recent blocks, and the logs of the new ones must be seen too.
        """
        start_block = self.config_entry.data[CONF_START_BLOCK]
        query_from = max(start_block, self._head - REORG_WINDOW)
        try:
            return await self.client.read_market(sorted(self._offers), sorted(self._connections), query_from)
        except ContractLogicError:
            # An offer or connection read by id is gone (a reorganisation undid it): read the ids afresh.
            self._offers.clear()
            self._connections.clear()
            return await self.client.read_market((), (), query_from)
        except Web3RPCError:
            head = await self.client.block_number()
            if head >= query_from:
                raise
            # The chain went back by more than the window (a node restarted from an older state).
            return await self.client.read_market(
                sorted(self._offers), sorted(self._connections), max(start_block, head - REORG_WINDOW)
            )

    def _new_events(self, read: MarketRead) -> tuple[MarketEvent, ...]:
        """The logs not handled before; remember them while they are inside the window."""
        new = tuple(event for event in read.events if event.key not in self._handled)
        self._handled.update((event.key, event.block) for event in new)
        self._head = read.block
        oldest = read.block - REORG_WINDOW
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
        self, read: MarketRead, my_offers: dict[int, Offer], connections: dict[int, Connection]
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
            energy_sold_wh=totals["seller"][0],
            energy_bought_wh=totals["buyer"][0],
            earnings_wei=totals["seller"][1],
            spending_wei=totals["buyer"][1],
        )

    def _remove_stale_devices(self, live: set[int]) -> None:
        """Drop the devices of connections that ended (their entities go with them)."""
        registry = dr.async_get(self.hass)
        prefix = f"{self.config_entry.unique_id}_"
        for device in dr.async_entries_for_config_entry(registry, self.config_entry.entry_id):
            for domain, identifier in device.identifiers:
                if domain == DOMAIN and identifier.startswith(prefix) and int(identifier[len(prefix) :]) not in live:
                    registry.async_update_device(device.id, remove_config_entry_id=self.config_entry.entry_id)

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
