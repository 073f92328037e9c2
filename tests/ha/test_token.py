"""A market settling in an ERC-20 token: amounts in the token, bids with a permit or an exact approval."""

from __future__ import annotations

from typing import Any

import pytest
from eth_typing import HexStr
from eth_utils.crypto import keccak
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.button.const import DOMAIN as BUTTON_DOMAIN
from homeassistant.components.button.const import SERVICE_PRESS
from homeassistant.const import ATTR_ENTITY_ID
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ServiceValidationError
from pytest_homeassistant_custom_component.common import async_capture_events  # type: ignore[import-untyped]
from web3.types import RPCEndpoint

from custom_components.energykart.const import (
    CONF_CURRENCY,
    CONF_METER_ADDRESS,
    DOMAIN,
    EVENT_OFFER_AWARDED,
    EVENT_OFFER_CREATED,
    EVENT_OUTBID,
    EVENT_SETTLED,
)
from custom_components.energykart.diagnostics import async_get_config_entry_diagnostics
from devchain.anvil import Anvil

from .conftest import (
    BUYER,
    RIVAL,
    SELLER,
    TokenMarket,
    deploy_plain_token,
    make_token_market,
    market_entry,
    poll,
    reported_meter,
    setup_entry,
)

SELLER_ID = "energy_kart_0x71be_5788"
BUYER_ID = "energy_kart_0xfabb_694a"
BID_WITH_PERMIT = keccak(text="bidWithPermit(uint256,uint256,address,uint256,uint8,bytes32,bytes32)")[:4]
BID = keccak(text="bid(uint256,uint256,address)")[:4]


async def call(hass: HomeAssistant, service: str, data: dict[str, Any]) -> Any:
    return await hass.services.async_call(DOMAIN, service, data, blocking=True, return_response=True)


def state(hass: HomeAssistant, entity_id: str) -> tuple[str, str | None]:
    """The state and its unit."""
    found = hass.states.get(entity_id)
    assert found is not None, entity_id
    return found.state, found.attributes.get("unit_of_measurement")


def nonce(market: TokenMarket, account: str) -> int:
    return int(market.chain.w3.eth.get_transaction_count(account))  # type: ignore[arg-type]


def sent_selector(market: TokenMarket, tx_hash: str) -> bytes:
    """The function a transaction called, and check it carried no value."""
    tx = market.chain.w3.eth.get_transaction(HexStr(tx_hash))
    assert tx["value"] == 0
    assert tx["to"] == market.chain.market.address
    return bytes(tx["input"])[:4]


def approvals(market: TokenMarket, owner: str, from_block: int) -> list[int]:
    """The allowances `owner` gave the market since `from_block`, in order."""
    logs = market.token.events.Approval().get_logs(from_block=from_block)
    return [log["args"]["value"] for log in logs if log["args"]["owner"] == owner]


async def test_trade_in_a_six_decimal_token_with_permits(
    hass: HomeAssistant, anvil: Anvil, freezer: FrozenDateTimeFactory
) -> None:
    """EURe with 6 decimals, which takes permits: sensors, events and actions in EURe, scaled by
    10**6; a bid is one transaction with a permit for exactly its escrow; withdrawals pay EURe."""
    market = make_token_market(anvil.url, decimals=6)
    chain, token = market.chain, market.token
    meter = reported_meter(chain, BUYER.address, wh=5000)
    rival_meter = reported_meter(chain, RIVAL.address)
    seller = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    created = async_capture_events(hass, EVENT_OFFER_CREATED)
    outbid = async_capture_events(hass, EVENT_OUTBID)
    awarded = async_capture_events(hass, EVENT_OFFER_AWARDED)
    settled = async_capture_events(hass, EVENT_SETTLED)

    assert buyer.data[CONF_CURRENCY] == {"symbol": "EURe", "decimals": 6, "token": token.address}
    assert state(hass, f"sensor.{BUYER_ID}_wallet_balance") == ("1000.0", "EURe")
    assert state(hass, f"sensor.{BUYER_ID}_gas_balance") == ("100.0", "ETH")
    assert state(hass, f"sensor.{BUYER_ID}_best_open_price") == ("unknown", "EURe/kWh")
    assert state(hass, f"sensor.{BUYER_ID}_escrow_locked") == ("0.0", "EURe")

    sell = {"config_entry_id": seller.entry_id, "energy": 2, "start_price": "0.25", "bidding_minutes": 10}
    with pytest.raises(ServiceValidationError) as caught:
        await call(hass, "sell", {**sell, "start_price": 0.0000001})  # a tenth of EURe's smallest unit
    assert caught.value.translation_key == "too_many_decimals"
    assert "0.0000001 EURe has more digits after the point than EURe has (6 decimals)" in str(caught.value)
    assert await call(hass, "sell", sell) == {"offer_id": 1}
    assert chain.offer(1)["startPricePerKWh"] == 250_000
    await poll(hass, freezer)
    assert [(event.data["start_price_per_kwh"], event.data["currency"]) for event in created] == [(0.25, "EURe")] * 2
    assert state(hass, f"sensor.{BUYER_ID}_best_open_price") == ("0.25", "EURe/kWh")

    # Too little EURe for the escrow (0.3 EURe/kWh for 2 kWh): refused before anything is sent.
    chain.tx(token.functions.transfer(RIVAL.address, market.units("999.5")), BUYER.address)
    bid = {"config_entry_id": buyer.entry_id, "offer_id": 1, "price": 0.3}
    before = nonce(market, BUYER.address)
    with pytest.raises(ServiceValidationError) as caught:
        await call(hass, "bid", bid)
    assert caught.value.translation_key == "insufficient_token_balance"
    assert "holds 0.5 EURe; this bid escrows 0.6 EURe" in str(caught.value)
    assert nonce(market, BUYER.address) == before
    chain.tx(token.functions.transfer(BUYER.address, market.units("999.5")), RIVAL.address)

    held = market.balance(BUYER.address)
    response = await call(hass, "bid", bid)
    assert sent_selector(market, response["transaction_hash"]) == BID_WITH_PERMIT
    assert nonce(market, BUYER.address) == before + 1  # one transaction: no approval
    assert market.balance(BUYER.address) == held - 600_000
    assert market.allowance(BUYER.address) == 0
    assert state(hass, f"sensor.{BUYER_ID}_escrow_locked") == ("0.6", "EURe")
    assert state(hass, f"sensor.{BUYER_ID}_wallet_balance") == ("999.4", "EURe")

    market.bid(RIVAL.address, 1, market.units("0.35"), rival_meter.address)
    await poll(hass, freezer)
    assert [(event.data["refund"], event.data["currency"]) for event in outbid] == [(0.6, "EURe")]
    assert state(hass, f"sensor.{BUYER_ID}_withdrawable_credit") == ("0.6", "EURe")
    assert state(hass, f"sensor.{SELLER_ID}_highest_bid_on_my_offer") == ("0.35", "EURe/kWh")
    offers = await call(hass, "list_offers", {"config_entry_id": buyer.entry_id})
    assert offers["currency"] == "EURe"
    assert offers["offers"][0]["min_next_bid_per_kwh"] == 0.351

    response = await call(hass, "bid", {**bid, "price": "0.4"})  # a second permit: the token's next nonce
    assert sent_selector(market, response["transaction_hash"]) == BID_WITH_PERMIT
    assert market.allowance(BUYER.address) == 0
    chain.travel(601)
    chain.tx(chain.market.functions.finalize(1), chain.registrar)
    chain.settle(chain.sign(meter, 5500, chain.now() + 1))
    await poll(hass, freezer)
    assert {(event.data["price_per_kwh"], event.data["currency"]) for event in awarded} == {(0.4, "EURe")}
    assert {(event.data["paid"], event.data["currency"]) for event in settled} == {(0.2, "EURe")}
    assert state(hass, f"sensor.{SELLER_ID}_earnings") == ("0.2", "EURe")
    assert state(hass, f"sensor.{BUYER_ID}_spending") == ("0.2", "EURe")
    assert state(hass, "sensor.connection_1_buying_price") == ("0.4", "EURe/kWh")

    # Withdrawals pay EURe: the seller's payment, the buyer's outbid escrow.
    seller_held = market.balance(SELLER.address)
    await hass.services.async_call(
        BUTTON_DOMAIN, SERVICE_PRESS, {ATTR_ENTITY_ID: f"button.{SELLER_ID}_withdraw_credit"}, blocking=True
    )
    assert market.balance(SELLER.address) == seller_held + 200_000
    assert state(hass, f"sensor.{SELLER_ID}_wallet_balance") == ("1000.2", "EURe")
    buyer_held = market.balance(BUYER.address)
    await call(hass, "withdraw", {"config_entry_id": buyer.entry_id})
    assert market.balance(BUYER.address) == buyer_held + 600_000
    assert state(hass, f"sensor.{BUYER_ID}_withdrawable_credit") == ("0.0", "EURe")
    # What the market still holds: the rest of the buyer's escrow and the rival's outbid one.
    assert market.balance(chain.market.address) == market.units("0.6") + market.units("0.7")

    diagnostics = await async_get_config_entry_diagnostics(hass, buyer)
    assert diagnostics["currency"] == {"symbol": "EURe", "decimals": 6, "token": token.address}
    assert diagnostics["bids_with_permit"] is True


async def test_bid_approves_exactly_the_escrow(
    hass: HomeAssistant, anvil: Anvil, plain_token_artifact: dict[str, Any]
) -> None:
    """A token without permits, whose approve behaves like USDT's: a bid approves exactly its
    escrow first (resetting an allowance left from elsewhere), and leaves no allowance."""
    market = make_token_market(anvil.url, deploy_plain_token(anvil.url, plain_token_artifact))
    chain, token = market.chain, market.token
    meter = reported_meter(chain, BUYER.address)
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    assert (await async_get_config_entry_diagnostics(hass, buyer))["bids_with_permit"] is False
    first = chain.create_offer(SELLER.address, 2000, market.units("0.25"))
    second = chain.create_offer(SELLER.address, 1000, market.units("0.25"))

    # An allowance given elsewhere, which this token will not change to another non-zero one.
    chain.tx(token.functions.approve(chain.market.address, 5), BUYER.address)
    block = chain.w3.eth.block_number + 1
    before = nonce(market, BUYER.address)
    held = market.balance(BUYER.address)
    response = await call(hass, "bid", {"config_entry_id": buyer.entry_id, "offer_id": first, "price": 0.3})
    assert sent_selector(market, response["transaction_hash"]) == BID
    assert nonce(market, BUYER.address) == before + 3  # reset, approve, bid
    assert approvals(market, BUYER.address, block) == [0, market.units("0.6")]
    assert market.allowance(BUYER.address) == 0
    assert market.balance(BUYER.address) == held - market.units("0.6")

    bid = {"config_entry_id": buyer.entry_id, "offer_id": second, "price": 0.5}
    block = chain.w3.eth.block_number + 1
    await call(hass, "bid", bid)
    assert nonce(market, BUYER.address) == before + 5  # approve, bid
    assert approvals(market, BUYER.address, block) == [market.units("0.5")]
    assert market.allowance(BUYER.address) == 0
    assert state(hass, f"sensor.{BUYER_ID}_escrow_locked") == ("1.1", "EURe")

    # An allowance of exactly the escrow, given elsewhere, is used as it is.
    chain.tx(token.functions.approve(chain.market.address, market.units("0.6")), BUYER.address)
    before = nonce(market, BUYER.address)
    await call(hass, "bid", {**bid, "price": "0.6"})
    assert nonce(market, BUYER.address) == before + 1
    assert market.allowance(BUYER.address) == 0

    # The market's own checks run before anything is approved.
    unreported = chain.new_meter(BUYER.address)
    hass.config_entries.async_update_entry(buyer, options={**buyer.options, CONF_METER_ADDRESS: unreported.address})
    await hass.async_block_till_done()
    with pytest.raises(ServiceValidationError) as caught:
        await call(hass, "bid", {**bid, "price": 0.7})
    assert caught.value.translation_key == "meter_never_reported"
    assert nonce(market, BUYER.address) == before + 1
    hass.config_entries.async_update_entry(buyer, options={**buyer.options, CONF_METER_ADDRESS: meter.address})
    await hass.async_block_till_done()

    # Gas is still paid in the chain's coin.
    chain.w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [BUYER.address, "0x0"])
    with pytest.raises(ServiceValidationError) as caught:
        await call(hass, "bid", {**bid, "price": 0.7})
    assert caught.value.translation_key == "insufficient_funds"
    assert "The wallet holds 0.000000 ETH" in str(caught.value)
    assert nonce(market, BUYER.address) == before + 1
    assert market.allowance(BUYER.address) == 0
