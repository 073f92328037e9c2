"""The integration reads the contract's paged views page by page, and withdraws what the pages show."""

from __future__ import annotations

import pytest
from eth_typing import HexStr
from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant

from custom_components.energykart import client as client_module
from custom_components.energykart.const import DOMAIN
from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import BUYER, RIVAL, SELLER, market_entry, poll, reported_meter, setup_entry, state

SELLER_ID = "energy_kart_0x71be_5788"
PRICE = 10**14  # wei per kWh


async def test_pages_of_a_large_account_and_market(
    hass: HomeAssistant,
    chain: Chain,
    anvil: Anvil,
    freezer: FrozenDateTimeFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With pages of two, the seller's four open records and the market's offers take several
    pages: the sums, the counts and the best price must still be those of all of them, and an
    offer whose bidding is over is not open."""
    monkeypatch.setattr(client_module, "ACCOUNT_PAGE", 2)
    monkeypatch.setattr(client_module, "OFFER_PAGE", 2)
    meter = reported_meter(chain, BUYER.address, wh=1000)
    connections = [chain.award(SELLER.address, BUYER.address, meter.address, 1000, PRICE) for _ in range(2)]
    for _ in range(3):
        chain.create_offer(SELLER.address, 500, PRICE, 3600)
    chain.create_offer(RIVAL.address, 500, PRICE // 10, 60)  # cheapest, but bidding ends soon
    chain.create_offer(RIVAL.address, 500, 2 * PRICE, 3600)
    chain.settle(chain.sign(meter, 2500, chain.now() + 1))  # fills the first, half of the second
    chain.travel(61)
    assert len(chain.open_ids(SELLER.address)) == 4  # the half-filled connection and three offers

    seller = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    unclaimed = 1500 * PRICE // 1000
    assert chain.stored_credit(SELLER.address) == 1000 * PRICE // 1000  # the completed one
    assert float(state(hass, f"sensor.{SELLER_ID}_withdrawable_credit")) == pytest.approx(unclaimed / 10**18)
    assert state(hass, f"sensor.{SELLER_ID}_open_offers") == "4"  # three of the seller's, one of the rival's
    assert float(state(hass, f"sensor.{SELLER_ID}_best_open_price")) == pytest.approx(2 * PRICE / 10**18)
    assert set(seller.runtime_data.data.connections) == {connections[1]}

    # One withdrawal pays it all: the open connection's payment is claimed in the same transaction.
    before = chain.w3.eth.get_balance(SELLER.address)
    response = await hass.services.async_call(
        DOMAIN, "withdraw", {"config_entry_id": seller.entry_id}, blocking=True, return_response=True
    )
    assert response is not None
    receipt = chain.w3.eth.get_transaction_receipt(HexStr(str(response["transaction_hash"])))
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert chain.w3.eth.get_balance(SELLER.address) == before + unclaimed - fee
    assert chain.credit(SELLER.address) == 0
    await poll(hass, freezer)
    assert float(state(hass, f"sensor.{SELLER_ID}_withdrawable_credit")) == 0
