"""Every error message the integration raises reads in full: each placeholder is filled."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.switch.const import DOMAIN as SWITCH_DOMAIN
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import ATTR_ENTITY_ID, SERVICE_TURN_ON
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers.translation import async_get_exception_message, async_get_translations
from pytest_homeassistant_custom_component.common import MockConfigEntry  # type: ignore[import-untyped]
from web3.exceptions import ContractLogicError

from custom_components.energykart import services
from custom_components.energykart.const import CONF_METER_ADDRESS, CONF_PRIVATE_KEY, DOMAIN
from custom_components.energykart.contract import ABI, decode_error
from custom_components.energykart.coordinator import EnergyKartCoordinator
from custom_components.energykart.errors import (
    EnergyKartConnectionError,
    InsufficientFundsError,
    InsufficientTokenBalanceError,
    KeyRejectedError,
    TransactionLostError,
    TransactionRejectedError,
    TransactionUnconfirmedError,
    WatchOnlyError,
)
from devchain.anvil import Anvil, free_port
from tests.chain import Chain

from .conftest import (
    BUYER,
    RIVAL,
    SELLER,
    make_chain,
    make_token_market,
    market_entry,
    poll,
    reported_meter,
    setup_entry,
)
from .test_faults import fault_at

EXCEPTIONS: dict[str, dict[str, str]] = json.loads(
    Path(services.__file__).with_name("strings.json").read_text(encoding="utf-8")
)["exceptions"]
PRICE = 10**14  # wei per kWh
TX_HASH = "0x" + "ab" * 32


class Messages:
    """The messages of the translated errors raised, rendered as Home Assistant shows them, by key."""

    def __init__(self) -> None:
        self.by_key: dict[str, str] = {}

    def add(self, key: str | None, message: str) -> None:
        assert key in EXCEPTIONS, key
        assert message != key, f"{key} is not rendered from the translations"
        assert "{" not in message, f"{key}: {message}"
        assert "}" not in message, f"{key}: {message}"
        self.by_key[key] = message

    def error(self, err: HomeAssistantError) -> None:
        assert err.translation_domain == DOMAIN
        self.add(err.translation_key, str(err))

    async def raised(self, awaitable: Awaitable[Any]) -> None:
        with pytest.raises(HomeAssistantError) as caught:
            await awaitable
        self.error(caught.value)

    async def action(self, hass: HomeAssistant, service: str, data: dict[str, Any]) -> None:
        await self.raised(hass.services.async_call(DOMAIN, service, data, blocking=True, return_response=True))


def contract_error(name: str) -> ContractLogicError:
    """The market's custom error `name` as a node returns it, with example arguments."""
    (item,) = [item for item in ABI if item["type"] == "error" and item["name"] == name]
    types = [argument["type"] for argument in item["inputs"]]
    examples = {"address": SELLER.address, "uint256": 12345 * 10**12, "uint8": 3}
    selector = keccak(text=f"{name}({','.join(types)})")[:4]
    data = "0x" + (selector + abi_encode(types, [examples[t] for t in types])).hex()
    return ContractLogicError("execution reverted", data=data)


async def failing(err: Exception) -> None:
    raise err


async def test_every_exception_message_is_filled(
    hass: HomeAssistant, chain: Chain, anvil: Anvil, freezer: FrozenDateTimeFactory
) -> None:
    """Raise every error of strings.json's "exceptions" the way the integration does; each message
    has all its placeholders filled."""
    await async_get_translations(hass, "en", "exceptions", {DOMAIN})
    messages = Messages()
    meter = reported_meter(chain, BUYER.address)
    seller = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    watcher = await setup_entry(hass, market_entry(chain, anvil.url, RIVAL, trading=False))

    # Actions: input refused before anything is sent.
    sell = {"config_entry_id": seller.entry_id, "energy": 1, "start_price": 0.001, "bidding_minutes": 10}
    for wrong in (
        {"energy": -1},
        {"start_price": 0},
        {"start_price": "1e-19"},
        {"bidding_minutes": 0},
        {"config_entry_id": "nope"},
        {"config_entry_id": watcher.entry_id},
    ):
        await messages.action(hass, "sell", {**sell, **wrong})
    offer = chain.create_offer(SELLER.address, 1000, PRICE, 600)
    rival_offer = chain.create_offer(RIVAL.address, 1000, PRICE, 600)
    bid = {"config_entry_id": buyer.entry_id, "offer_id": offer, "price": 0.0002}
    await messages.action(hass, "bid", {**bid, "offer_id": 99})
    await messages.action(hass, "bid", {**bid, "price": 0.00001})
    await messages.action(hass, "bid", {**bid, "config_entry_id": seller.entry_id})  # no meter
    hass.config_entries.async_update_entry(seller, options={**seller.options, CONF_METER_ADDRESS: meter.address})
    await messages.action(hass, "bid", {**bid, "config_entry_id": seller.entry_id})  # its own offer
    await messages.action(hass, "bid", {**bid, "config_entry_id": seller.entry_id, "offer_id": rival_offer})
    hass.config_entries.async_update_entry(seller, options={**seller.options, CONF_METER_ADDRESS: RIVAL.address})
    await messages.action(hass, "bid", {**bid, "config_entry_id": seller.entry_id, "offer_id": rival_offer})
    unreported = chain.new_meter(BUYER.address)
    hass.config_entries.async_update_entry(buyer, options={**buyer.options, CONF_METER_ADDRESS: unreported.address})
    await messages.action(hass, "bid", bid)  # refused by the contract's own check
    hass.config_entries.async_update_entry(buyer, options={**buyer.options, CONF_METER_ADDRESS: meter.address})
    await messages.action(hass, "close_connection", {"config_entry_id": buyer.entry_id, "connection_id": 99})
    await messages.action(hass, "withdraw", {"config_entry_id": buyer.entry_id})
    chain.travel(601)
    await messages.action(hass, "bid", bid)

    # A connection's switch cannot turn on again.
    chain.award(SELLER.address, BUYER.address, meter.address, 1000, PRICE)
    await poll(hass, freezer)
    await messages.raised(
        hass.services.async_call(
            SWITCH_DOMAIN,
            SERVICE_TURN_ON,
            {ATTR_ENTITY_ID: "switch.connection_3_buying_connection"},
            blocking=True,
        )
    )

    # What a transaction can meet: each of the client's errors, and each of the contract's that
    # has a message of its own (BidTooLow's with the minimum price), else its name.
    coordinator: EnergyKartCoordinator = buyer.runtime_data
    for err in (
        WatchOnlyError(BUYER.address),
        InsufficientFundsError(10**18, 10**15),
        InsufficientTokenBalanceError(10**18, 10**15),
        TransactionUnconfirmedError(TX_HASH),
        TransactionLostError(TX_HASH),
        EnergyKartConnectionError("connection refused"),
        KeyRejectedError("Sender account not authorized to send transactions"),
        *(
            TransactionRejectedError(*decode_error(contract_error(reason)))
            for reason in (*services._REJECTIONS, "BidTooLow", "Reentrancy")
        ),
    ):
        await messages.raised(services._send(coordinator, failing(err)))
    assert messages.by_key["price_too_low"] == "The bid must be at least 0.012345 ETH per kWh"
    # A revert whose data a node cut after the selector: the error's name, without its minimum.
    cut = ContractLogicError("execution reverted", data=str(contract_error("BidTooLow").data)[:10])
    assert decode_error(cut) == ("BidTooLow", ())
    await messages.raised(services._send(coordinator, failing(TransactionRejectedError(*decode_error(cut)))))
    assert messages.by_key["transaction_rejected"] == "The market rejected the transaction (BidTooLow)"

    # Entries that cannot load, and an update that cannot reach the node.
    token = make_token_market(anvil.url).token
    not_a_token = make_chain(anvil.url, currency=chain.market.address)
    other_key = market_entry(chain, anvil.url, RIVAL)
    other_key = MockConfigEntry(
        domain=DOMAIN,
        data={**other_key.data, CONF_PRIVATE_KEY: "0x" + bytes(SELLER.key).hex()},
        options=other_key.options,
        unique_id=other_key.unique_id,
    )
    for entry in (
        market_entry(chain, anvil.url, SELLER, contract=token.address),
        market_entry(not_a_token, anvil.url, SELLER),
        other_key,
    ):
        entry.add_to_hass(hass)
        assert not await hass.config_entries.async_setup(entry.entry_id)
        assert entry.state is ConfigEntryState.SETUP_ERROR
        key, placeholders = entry.error_reason_translation_key, entry.error_reason_translation_placeholders
        messages.add(key, async_get_exception_message(DOMAIN, str(key), placeholders))
    lost = market_entry(not_a_token, f"http://127.0.0.1:{free_port()}", BUYER)
    lost.add_to_hass(hass)
    unreachable = EnergyKartCoordinator(hass, lost)
    await unreachable.async_refresh()
    assert isinstance(unreachable.last_exception, HomeAssistantError)
    messages.error(unreachable.last_exception)

    assert await hass.config_entries.async_unload(watcher.entry_id)
    await messages.action(hass, "sell", {**sell, "config_entry_id": watcher.entry_id})

    assert sorted(messages.by_key) == sorted(EXCEPTIONS)


async def test_rejected_bid_tells_the_minimum(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """A rival outbids between the integration's check and its transaction: the contract refuses
    the bid, and the message tells the new minimum price from the contract's error."""
    await async_get_translations(hass, "en", "exceptions", {DOMAIN})
    meter = reported_meter(chain, BUYER.address)
    rival_meter = reported_meter(chain, RIVAL.address)
    offer = chain.create_offer(SELLER.address, 1000, PRICE, 600)
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    before = chain.w3.eth.get_transaction_count(BUYER.address)

    def rival_bids() -> None:
        chain.place_bid(offer, RIVAL.address, rival_meter.address, 5 * PRICE)

    with (
        fault_at("eth_estimateGas", rival_bids, before=True),
        pytest.raises(ServiceValidationError) as caught,
    ):
        await hass.services.async_call(
            DOMAIN,
            "bid",
            {"config_entry_id": buyer.entry_id, "offer_id": offer, "price": 0.0002},
            blocking=True,
            return_response=True,
        )
    minimum = buyer.runtime_data.currency.text(chain.market.functions.minNextBid(offer).call())
    assert caught.value.translation_key == "price_too_low"
    assert caught.value.translation_placeholders == {"minimum": minimum, "symbol": "ETH"}
    assert str(caught.value) == f"The bid must be at least {minimum} ETH per kWh"
    assert chain.w3.eth.get_transaction_count(BUYER.address) == before  # nothing was sent
