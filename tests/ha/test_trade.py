"""A full trade driven through the actions, seen in the entities and on the event bus."""

from __future__ import annotations

from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.button.const import DOMAIN as BUTTON_DOMAIN
from homeassistant.components.button.const import SERVICE_PRESS
from homeassistant.components.switch.const import DOMAIN as SWITCH_DOMAIN
from homeassistant.const import ATTR_ENTITY_ID, SERVICE_TURN_OFF, STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from pytest_homeassistant_custom_component.common import async_capture_events  # type: ignore[import-untyped]

from custom_components.energykart.const import (
    DOMAIN,
    EVENT_CONNECTION_CLOSED,
    EVENT_OFFER_AWARDED,
    EVENT_OFFER_CREATED,
    EVENT_OUTBID,
    EVENT_SETTLED,
)
from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import BUYER, RIVAL, SELLER, market_entry, poll, reported_meter, setup_entry, state

SELLER_ID = "energy_kart_0x71be_5788"
BUYER_ID = "energy_kart_0xfabb_694a"
GWEI = 10**9


async def test_full_trade(hass: HomeAssistant, chain: Chain, anvil: Anvil, freezer: FrozenDateTimeFactory) -> None:
    """Sell, bid (and be outbid), award, deliver, close, release and withdraw."""
    meter = reported_meter(chain, BUYER.address, wh=5000)
    rival_meter = reported_meter(chain, RIVAL.address)
    seller = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    created = async_capture_events(hass, EVENT_OFFER_CREATED)
    outbid = async_capture_events(hass, EVENT_OUTBID)
    awarded = async_capture_events(hass, EVENT_OFFER_AWARDED)
    settled = async_capture_events(hass, EVENT_SETTLED)
    closed = async_capture_events(hass, EVENT_CONNECTION_CLOSED)

    response = await hass.services.async_call(
        DOMAIN,
        "sell",
        {"config_entry_id": seller.entry_id, "energy": 2, "start_price": 0.0001, "bidding_minutes": 10},
        blocking=True,
        return_response=True,
    )
    assert response == {"offer_id": 1}
    assert state(hass, f"sensor.{SELLER_ID}_open_offers") == "1"
    await poll(hass, freezer)
    assert [event.data["mine"] for event in created] == [True, False]
    assert state(hass, f"sensor.{BUYER_ID}_best_open_price") == "0.0001"

    response = await hass.services.async_call(
        DOMAIN,
        "bid",
        {"config_entry_id": buyer.entry_id, "offer_id": 1, "price": 0.0002},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    assert str(response["transaction_hash"]).startswith("0x")
    assert float(state(hass, f"sensor.{BUYER_ID}_escrow_locked")) == 0.0004
    chain.tx(
        chain.market.functions.bid(1, 3 * 10**14, rival_meter.address),
        RIVAL.address,
        value=chain.escrow_for(1, 3 * 10**14),
    )
    await poll(hass, freezer)
    assert [event.data["offer_id"] for event in outbid] == [1]
    assert float(state(hass, f"sensor.{BUYER_ID}_withdrawable_credit")) == 0.0004
    assert float(state(hass, f"sensor.{SELLER_ID}_highest_bid_on_my_offer")) == 0.0003

    await hass.services.async_call(
        DOMAIN,
        "bid",
        {"config_entry_id": buyer.entry_id, "offer_id": 1, "price": 0.0004},
        blocking=True,
        return_response=True,
    )
    chain.travel(601)
    chain.tx(chain.market.functions.finalize(1), chain.registrar)
    await poll(hass, freezer)
    assert sorted(event.data["role"] for event in awarded) == ["buyer", "seller"]
    assert state(hass, "binary_sensor.connection_1_buying_delivering") == STATE_ON
    assert state(hass, "switch.connection_1_buying_connection") == STATE_ON
    assert state(hass, "binary_sensor.connection_1_selling_delivering") == STATE_ON
    assert state(hass, f"sensor.{SELLER_ID}_open_offers") == "0"

    chain.settle(chain.sign(meter, 5500, chain.now() + 1))  # after the award second
    await poll(hass, freezer)
    assert {event.data["role"] for event in settled} == {"buyer", "seller"}
    assert float(state(hass, f"sensor.{BUYER_ID}_energy_bought")) == 0.5
    assert float(state(hass, f"sensor.{SELLER_ID}_energy_sold")) == 0.5
    assert float(state(hass, f"sensor.{SELLER_ID}_earnings")) == 0.0002
    assert float(state(hass, f"sensor.{BUYER_ID}_spending")) == 0.0002
    assert float(state(hass, "sensor.connection_1_buying_delivered_energy")) == 0.5

    await hass.services.async_call(
        SWITCH_DOMAIN, SERVICE_TURN_OFF, {ATTR_ENTITY_ID: "switch.connection_1_buying_connection"}, blocking=True
    )
    assert state(hass, "switch.connection_1_buying_connection") == STATE_OFF
    await poll(hass, freezer)
    assert sorted(event.data["role"] for event in closed) == ["buyer", "seller"]

    chain.travel(901)
    chain.tx(chain.market.functions.release(1), chain.registrar)
    await poll(hass, freezer)
    assert [event.data["final"] for event in settled][-2:] == [True, True]
    assert hass.states.get("switch.connection_1_buying_connection") is None
    devices = dr.async_entries_for_config_entry(dr.async_get(hass), buyer.entry_id)
    assert [device.name for device in devices] == [buyer.title]
    assert float(state(hass, f"sensor.{BUYER_ID}_energy_bought")) == 0.5
    # the refund of 1.5 kWh at 0.0004 plus the outbid escrow
    assert float(state(hass, f"sensor.{BUYER_ID}_withdrawable_credit")) == 0.001

    balance = float(state(hass, f"sensor.{SELLER_ID}_wallet_balance"))
    assert float(state(hass, f"sensor.{SELLER_ID}_withdrawable_credit")) == 0.0002
    await hass.services.async_call(
        BUTTON_DOMAIN, SERVICE_PRESS, {ATTR_ENTITY_ID: f"button.{SELLER_ID}_withdraw_credit"}, blocking=True
    )
    assert float(state(hass, f"sensor.{SELLER_ID}_withdrawable_credit")) == 0
    assert float(state(hass, f"sensor.{SELLER_ID}_wallet_balance")) > balance
