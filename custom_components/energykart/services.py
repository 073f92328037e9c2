"""Actions: sell, bid, close a connection, withdraw, list the open offers.

Input a user can fix is checked before anything is sent; the contract's own checks then run in the
gas estimate, still before sending, and come back as the same translated errors.
"""

from __future__ import annotations

from collections.abc import Awaitable
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import voluptuous as vol
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, ServiceCall, ServiceResponse, SupportsResponse, callback
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import config_validation as cv

from .const import CONF_METER_ADDRESS, DOMAIN, MAX_BIDDING_MINUTES, ZERO_ADDRESS
from .contract import Status
from .coordinator import EnergyKartConfigEntry, EnergyKartCoordinator
from .currency import NATIVE, Currency
from .errors import (
    EnergyKartConnectionError,
    InsufficientFundsError,
    InsufficientTokenBalanceError,
    KeyRejectedError,
    TransactionLostError,
    TransactionRejectedError,
    TransactionUnconfirmedError,
    WatchOnlyError,
)

ATTR_CONFIG_ENTRY_ID: Final = "config_entry_id"
ATTR_ENERGY: Final = "energy"
ATTR_START_PRICE: Final = "start_price"
ATTR_BIDDING_MINUTES: Final = "bidding_minutes"
ATTR_OFFER_ID: Final = "offer_id"
ATTR_PRICE: Final = "price"
ATTR_CONNECTION_ID: Final = "connection_id"

SERVICE_SELL: Final = "sell"
SERVICE_BID: Final = "bid"
SERVICE_CLOSE_CONNECTION: Final = "close_connection"
SERVICE_WITHDRAW: Final = "withdraw"
SERVICE_LIST_OFFERS: Final = "list_offers"
# Prices are uint72 on chain, in the currency's smallest unit per kWh.
MAX_PRICE: Final = 2**72 - 1


def _decimal(value: Any) -> Decimal:
    """A number as written: a float by its shortest form (0.1 is one tenth), a string digit for digit."""
    try:
        return Decimal(str(value).strip())
    except InvalidOperation as err:
        raise vol.Invalid(f"expected a number, got {value!r}") from err


_ENTRY: dict[vol.Marker, Any] = {vol.Required(ATTR_CONFIG_ENTRY_ID): cv.string}
SELL_SCHEMA: Final = vol.Schema(
    {
        **_ENTRY,
        vol.Required(ATTR_ENERGY): vol.Coerce(float),
        vol.Required(ATTR_START_PRICE): _decimal,
        vol.Optional(ATTR_BIDDING_MINUTES, default=60): vol.Coerce(int),
    }
)
BID_SCHEMA: Final = vol.Schema(
    {**_ENTRY, vol.Required(ATTR_OFFER_ID): vol.Coerce(int), vol.Required(ATTR_PRICE): _decimal}
)
CLOSE_SCHEMA: Final = vol.Schema({**_ENTRY, vol.Required(ATTR_CONNECTION_ID): vol.Coerce(int)})
ENTRY_SCHEMA: Final = vol.Schema(_ENTRY)

# The contract's custom errors that a user's input causes, and the message each gets (BidTooLow's
# tells the minimum price, from the error's argument: see _rejected).
_REJECTIONS: Final = {
    "BiddingOver": "offer_not_open",
    "WrongStatus": "wrong_status",
    "UnknownOffer": "unknown_offer",
    "SelfTrade": "own_offer",
    "NotBuyer": "not_buyer",
    "NotMeterOwner": "meter_not_owned",
    "MeterNeverReported": "meter_never_reported",
    "NothingToWithdraw": "nothing_to_withdraw",
}


def _invalid(key: str, **placeholders: str) -> ServiceValidationError:
    return ServiceValidationError(
        translation_domain=DOMAIN, translation_key=key, translation_placeholders=placeholders or None
    )


def _price(currency: Currency, value: Decimal) -> int:
    """A price in the currency per kWh, given as a number of it, in its smallest unit: exactly."""
    if not value.is_finite() or not 0 < value <= Decimal(MAX_PRICE).scaleb(-currency.decimals):
        raise _invalid("invalid_price", price=str(value), symbol=currency.symbol)
    try:
        return currency.units(value)
    except ValueError as err:
        raise _invalid(
            "too_many_decimals", price=f"{value:f}", symbol=currency.symbol, decimals=str(currency.decimals)
        ) from err


def _coordinator(call: ServiceCall) -> EnergyKartCoordinator:
    entry_id: str = call.data[ATTR_CONFIG_ENTRY_ID]
    entry: EnergyKartConfigEntry | None = call.hass.config_entries.async_get_entry(entry_id)
    if entry is None or entry.domain != DOMAIN:
        raise _invalid("invalid_config_entry", config_entry=entry_id)
    if entry.state is not ConfigEntryState.LOADED:
        raise _invalid("unloaded_config_entry", config_entry=entry.title)
    return entry.runtime_data


def _trading(coordinator: EnergyKartCoordinator) -> None:
    if not coordinator.client.can_trade:
        raise _invalid("watch_only")


async def _send[T](coordinator: EnergyKartCoordinator, transaction: Awaitable[T]) -> T:
    """Run a transaction; translate what went wrong; refresh the entities after it."""
    try:
        result = await transaction
    except WatchOnlyError as err:
        raise _invalid("watch_only") from err
    except InsufficientFundsError as err:  # of the native coin, for gas (and a native market's escrow)
        raise _invalid(
            "insufficient_funds",
            required=f"{NATIVE.value(err.required_wei):.6f}",
            balance=f"{NATIVE.value(err.balance_wei):.6f}",
            symbol=NATIVE.symbol,
        ) from err
    except InsufficientTokenBalanceError as err:
        currency = coordinator.currency
        raise _invalid(
            "insufficient_token_balance",
            required=currency.text(err.required),
            balance=currency.text(err.balance),
            symbol=currency.symbol,
        ) from err
    except TransactionRejectedError as err:
        raise _rejected(coordinator.currency, err) from err
    except TransactionUnconfirmedError as err:
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="transaction_unconfirmed",
            translation_placeholders={"tx_hash": err.tx_hash},
        ) from err
    except TransactionLostError as err:
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="transaction_lost",
            translation_placeholders={"tx_hash": err.tx_hash},
        ) from err
    except KeyRejectedError as err:
        coordinator.config_entry.async_start_reauth(coordinator.hass)
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="key_rejected",
            translation_placeholders={"message": err.message},
        ) from err
    except EnergyKartConnectionError as err:
        raise _unreachable() from err
    await coordinator.async_refresh()
    return result


def _rejected(currency: Currency, err: TransactionRejectedError) -> HomeAssistantError:
    """The message of a transaction the contract refused: what to fix, else the error's name."""
    if err.reason == "BidTooLow" and err.details:
        return _invalid("price_too_low", minimum=currency.text(err.details[0]), symbol=currency.symbol)
    if key := _REJECTIONS.get(err.reason):
        return _invalid(key)
    return HomeAssistantError(
        translation_domain=DOMAIN,
        translation_key="transaction_rejected",
        translation_placeholders={"reason": err.reason},
    )


def _unreachable() -> HomeAssistantError:
    return HomeAssistantError(translation_domain=DOMAIN, translation_key="node_unreachable")


async def async_sell(coordinator: EnergyKartCoordinator, energy_kwh: float, start_price: Decimal, minutes: int) -> int:
    """Offer energy at a start price in the market's currency per kWh; return the offer id."""
    _trading(coordinator)
    energy_wh = round(energy_kwh * 1000)
    if not 1 <= energy_wh < 2**32:
        raise _invalid("invalid_energy", energy=str(energy_kwh))
    price = _price(coordinator.currency, start_price)
    if not 1 <= minutes <= MAX_BIDDING_MINUTES:
        raise _invalid("invalid_bidding_time", minutes=str(minutes), max=str(MAX_BIDDING_MINUTES))
    return await _send(coordinator, coordinator.client.create_offer(energy_wh, price, minutes * 60))


async def async_bid(coordinator: EnergyKartCoordinator, offer_id: int, price_per_kwh: Decimal) -> str:
    """Bid a price in the market's currency per kWh on an offer; return the transaction hash.

    The same bid again after an unconfirmed one follows that transaction up: its checks passed
    before it was sent, and the offer now shows the bid itself.
    """
    _trading(coordinator)
    meter = coordinator.config_entry.options.get(CONF_METER_ADDRESS)
    if not meter:
        raise _invalid("meter_required")
    price = _price(coordinator.currency, price_per_kwh)
    if coordinator.client.sent_unconfirmed("bid", offer_id, price, meter):
        escrow = 0  # the transaction sent before carries its escrow
    else:
        escrow = await _checked_bid(coordinator, offer_id, price, meter)
    return await _send(coordinator, coordinator.client.bid(offer_id, price, meter, escrow))


async def _checked_bid(coordinator: EnergyKartCoordinator, offer_id: int, price: int, meter: str) -> int:
    """Check a new bid against the offer and the meter's registration; return the escrow it needs."""
    try:
        offer = await coordinator.client.get_offer(offer_id)
        meter_owner = await coordinator.client.meter_owner(meter)
    except EnergyKartConnectionError as err:
        raise _unreachable() from err
    if offer is None:
        raise _invalid("unknown_offer")
    if offer.status != Status.BIDDING:
        raise _invalid("offer_not_open")
    if offer.seller == coordinator.account:
        raise _invalid("own_offer")
    if meter_owner == ZERO_ADDRESS:  # never registered, or revoked by the registrar
        raise _invalid("meter_not_registered", meter=meter)
    if meter_owner != coordinator.account:
        raise _invalid("meter_not_owned")
    if price < offer.min_next_bid:
        currency = coordinator.currency
        raise _invalid("price_too_low", minimum=currency.text(offer.min_next_bid), symbol=currency.symbol)
    return (price * offer.energy_wh + 999) // 1000  # the contract's escrowFor, rounded up


async def async_close_connection(coordinator: EnergyKartCoordinator, connection_id: int) -> str:
    """Close a connection this account buys on; return the transaction hash."""
    _trading(coordinator)
    connection = coordinator.data.connections.get(connection_id)
    resuming = coordinator.client.sent_unconfirmed("closeConnection", connection_id)
    if not resuming and (connection is None or connection.buyer != coordinator.account):
        raise _invalid("not_buyer")
    return await _send(coordinator, coordinator.client.close_connection(connection_id))


async def async_withdraw(coordinator: EnergyKartCoordinator) -> str:
    """Pay out the credit; return the transaction hash."""
    _trading(coordinator)
    account = coordinator.account
    # The payment on open connections as seller is credit only once claimed: claim them in the same transaction.
    selling = [
        i for i, c in coordinator.data.connections.items() if c.seller == account and c.status < Status.COMPLETED
    ]
    return await _send(coordinator, coordinator.client.withdraw(selling))


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register the integration's actions."""

    async def sell(call: ServiceCall) -> ServiceResponse:
        offer_id = await async_sell(
            _coordinator(call), call.data[ATTR_ENERGY], call.data[ATTR_START_PRICE], call.data[ATTR_BIDDING_MINUTES]
        )
        return {"offer_id": offer_id}

    async def bid(call: ServiceCall) -> ServiceResponse:
        tx_hash = await async_bid(_coordinator(call), call.data[ATTR_OFFER_ID], call.data[ATTR_PRICE])
        return {"transaction_hash": tx_hash}

    async def close_connection(call: ServiceCall) -> ServiceResponse:
        tx_hash = await async_close_connection(_coordinator(call), call.data[ATTR_CONNECTION_ID])
        return {"transaction_hash": tx_hash}

    async def withdraw(call: ServiceCall) -> ServiceResponse:
        return {"transaction_hash": await async_withdraw(_coordinator(call))}

    async def list_offers(call: ServiceCall) -> ServiceResponse:
        coordinator = _coordinator(call)
        return {
            "count": len(coordinator.data.open_offers),
            "currency": coordinator.currency.symbol,
            "offers": [coordinator.describe_offer(offer) for offer in coordinator.data.open_offers],
        }

    hass.services.async_register(DOMAIN, SERVICE_SELL, sell, SELL_SCHEMA, SupportsResponse.OPTIONAL)
    hass.services.async_register(DOMAIN, SERVICE_BID, bid, BID_SCHEMA, SupportsResponse.OPTIONAL)
    hass.services.async_register(
        DOMAIN, SERVICE_CLOSE_CONNECTION, close_connection, CLOSE_SCHEMA, SupportsResponse.OPTIONAL
    )
    hass.services.async_register(DOMAIN, SERVICE_WITHDRAW, withdraw, ENTRY_SCHEMA, SupportsResponse.OPTIONAL)
    hass.services.async_register(DOMAIN, SERVICE_LIST_OFFERS, list_offers, ENTRY_SCHEMA, SupportsResponse.ONLY)
