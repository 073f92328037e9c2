"""Actions: wrong input is refused with a translated error before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest
import voluptuous as vol
from homeassistant.components.switch.const import DOMAIN as SWITCH_DOMAIN
from homeassistant.const import ATTR_ENTITY_ID, SERVICE_TURN_ON
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from web3.types import RPCEndpoint

from custom_components.energykart.const import DOMAIN
from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import BUYER, RIVAL, SELLER, market_entry, reported_meter, setup_entry


async def call(hass: HomeAssistant, service: str, data: dict[str, Any]) -> Any:
    return await hass.services.async_call(DOMAIN, service, data, blocking=True, return_response=True)


async def refused(hass: HomeAssistant, chain: Chain, sender: str, service: str, data: dict[str, Any]) -> str:
    """Call an action that must fail; check no transaction left; return the translation key."""
    nonce = chain.w3.eth.get_transaction_count(sender)  # type: ignore[arg-type]
    with pytest.raises(HomeAssistantError) as caught:
        await call(hass, service, data)
    assert chain.w3.eth.get_transaction_count(sender) == nonce  # type: ignore[arg-type]
    assert caught.value.translation_domain == DOMAIN
    return str(caught.value.translation_key)


async def test_sell_and_bid_errors(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """Each kind of wrong input, for selling and for bidding."""
    seller = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    meter = reported_meter(chain, BUYER.address)
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    watcher = await setup_entry(hass, market_entry(chain, anvil.url, RIVAL, trading=False))
    sell = {"config_entry_id": seller.entry_id, "energy": 1, "start_price": 0.001, "bidding_minutes": 10}
    s = SELLER.address
    assert await refused(hass, chain, s, "sell", {**sell, "energy": -1}) == "invalid_energy"
    assert await refused(hass, chain, s, "sell", {**sell, "start_price": 0}) == "invalid_price"
    assert await refused(hass, chain, s, "sell", {**sell, "start_price": float("nan")}) == "invalid_price"
    assert await refused(hass, chain, s, "sell", {**sell, "bidding_minutes": 0}) == "invalid_bidding_time"
    assert await refused(hass, chain, s, "sell", {**sell, "config_entry_id": watcher.entry_id}) == "watch_only"
    assert await refused(hass, chain, s, "sell", {**sell, "config_entry_id": "nope"}) == "invalid_config_entry"
    assert await call(hass, "sell", sell) == {"offer_id": 1}

    bid = {"config_entry_id": buyer.entry_id, "offer_id": 1, "price": 0.002}
    b = BUYER.address
    assert await refused(hass, chain, b, "bid", {**bid, "offer_id": 7}) == "unknown_offer"
    assert await refused(hass, chain, b, "bid", {**bid, "price": 0.0005}) == "price_too_low"
    assert await refused(hass, chain, b, "bid", {**bid, "config_entry_id": watcher.entry_id}) == "watch_only"
    assert await refused(hass, chain, s, "bid", {**bid, "config_entry_id": seller.entry_id}) == "meter_required"
    assert await refused(hass, chain, b, "bid", {**bid, "price": 1000}) == "insufficient_funds"
    assert await refused(hass, chain, b, "bid", {**bid, "price": 5000}) == "invalid_price"  # above uint72 wei per kWh
    assert await refused(hass, chain, b, "bid", {**bid, "price": "1e-19"}) == "too_many_decimals"  # below 1 wei
    with pytest.raises(vol.Invalid):
        await call(hass, "bid", {**bid, "price": "cheap"})
    chain.w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [b, hex(10**15)])
    assert await refused(hass, chain, b, "bid", bid) == "insufficient_funds"
    chain.w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [b, hex(10**20)])

    hass.config_entries.async_update_entry(seller, options={**seller.options, "meter_address": meter.address})
    await hass.async_block_till_done()
    assert await refused(hass, chain, s, "bid", {**bid, "config_entry_id": seller.entry_id}) == "own_offer"

    unreported = chain.new_meter(BUYER.address)
    hass.config_entries.async_update_entry(buyer, options={**buyer.options, "meter_address": unreported.address})
    await hass.async_block_till_done()
    assert await refused(hass, chain, b, "bid", bid) == "meter_never_reported"
    hass.config_entries.async_update_entry(buyer, options={**buyer.options, "meter_address": meter.address})
    await hass.async_block_till_done()

    chain.travel(601)
    assert await refused(hass, chain, b, "bid", bid) == "offer_not_open"
    chain.tx(chain.market.functions.finalize(1), chain.registrar)
    assert await refused(hass, chain, b, "bid", bid) == "offer_not_open"

    assert (
        await refused(hass, chain, b, "close_connection", {"config_entry_id": buyer.entry_id, "connection_id": 1})
        == "not_buyer"
    )
    assert await refused(hass, chain, b, "withdraw", {"config_entry_id": buyer.entry_id}) == "nothing_to_withdraw"

    await hass.config_entries.async_unload(watcher.entry_id)
    assert (
        await refused(hass, chain, s, "list_offers", {"config_entry_id": watcher.entry_id}) == "unloaded_config_entry"
    )


async def test_list_offers_and_reopen(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """list_offers answers with the open offers; a closed connection cannot be switched back on."""
    meter = reported_meter(chain, BUYER.address)
    seller = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    await call(
        hass, "sell", {"config_entry_id": seller.entry_id, "energy": 1.5, "start_price": 0.001, "bidding_minutes": 1}
    )
    await call(hass, "bid", {"config_entry_id": buyer.entry_id, "offer_id": 1, "price": 0.001})
    response = await call(hass, "list_offers", {"config_entry_id": buyer.entry_id})
    assert response["count"] == 1
    offer = response["offers"][0]
    assert offer | {"bidding_ends": 0} == {
        "offer_id": 1,
        "mine": False,
        "energy_kwh": 1.5,
        "start_price_per_kwh": 0.001,
        "highest_bid_per_kwh": 0.001,
        "min_next_bid_per_kwh": 0.001000001,
        "bidding_ends": 0,
    }
    chain.travel(61)
    chain.tx(chain.market.functions.finalize(1), chain.registrar)
    await buyer.runtime_data.async_refresh()
    await hass.async_block_till_done()
    with pytest.raises(ServiceValidationError) as caught:
        await hass.services.async_call(
            SWITCH_DOMAIN, SERVICE_TURN_ON, {ATTR_ENTITY_ID: "switch.connection_1_buying_connection"}, blocking=True
        )
    assert caught.value.translation_key == "cannot_reopen"
    await call(hass, "close_connection", {"config_entry_id": buyer.entry_id, "connection_id": 1})
    nonce = chain.w3.eth.get_transaction_count(BUYER.address)
    with pytest.raises(ServiceValidationError) as caught:
        await call(hass, "close_connection", {"config_entry_id": buyer.entry_id, "connection_id": 1})
    assert caught.value.translation_key == "wrong_status"
    assert chain.w3.eth.get_transaction_count(BUYER.address) == nonce
