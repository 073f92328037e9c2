"""The Autopilot switch on a real market: a seller offers its surplus, a buyer bids within its limit
and budget, failures become events, the money sensors count the trade to the cent, and the switch
and its day survive a restart."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.switch.const import DOMAIN as SWITCH_DOMAIN
from homeassistant.const import ATTR_ENTITY_ID, SERVICE_TURN_OFF, SERVICE_TURN_ON, STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant, State
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (  # type: ignore[import-untyped]
    async_capture_events,
    mock_restore_cache_with_extra_data,
)
from web3.types import RPCEndpoint

from custom_components.energykart.autopilot_runner import EVENT_AUTOPILOT_DECISION
from custom_components.energykart.const import CONF_GRID_EXPORT, CONF_HOUSE_CONSUMPTION
from custom_components.energykart.tariffs import (
    CONF_DAILY_BUDGET,
    CONF_EXCHANGE_RATE_ENTITY,
    CONF_FEED_IN_PRICE_ENTITY,
    CONF_RETAIL_PRICE_ENTITY,
)
from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import BUYER, RIVAL, SELLER, START_BALANCE, market_entry, poll, reported_meter, setup_entry, state

SELLER_ID = "energy_kart_0x71be_5788"
BUYER_ID = "energy_kart_0xfabb_694a"
ETH_PRICE = Decimal(2)  # EUR: a cheap ETH keeps gas far below 2 % of what the test trades
WEI = 10**18
# EUR per kWh: retail 0.30 and margin 0.07 are the defaults; feed-in 0.08 comes from an entity in EUR/MWh.
START_PRICE = 75 * 10**15  # (0.08 + 0.07) EUR / 2 EUR per ETH, in wei per kWh
BID_PRICE = 95 * 10**15  # halfway from the start price to the limit
LIMIT = 115 * 10**15  # (0.30 - 0.07) EUR / 2


async def switch(hass: HomeAssistant, entity_id: str, service: str) -> None:
    await hass.services.async_call(SWITCH_DOMAIN, service, {ATTR_ENTITY_ID: entity_id}, blocking=True)
    await hass.async_block_till_done(wait_background_tasks=True)


def fee_eur(chain: Chain, events: list[Any]) -> Decimal:
    """The gas of the events' transactions, in EUR at ETH_PRICE, from their receipts."""
    total = Decimal(0)
    for event in events:
        receipt = chain.w3.eth.get_transaction_receipt(event.data["transaction_hash"])
        total += Decimal(receipt["gasUsed"] * receipt["effectiveGasPrice"]) * ETH_PRICE / WEI
    return total


def set_balance(chain: Chain, account: str, wei: int) -> None:
    chain.w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [account, hex(wei)])


async def test_autopilot_trades(
    hass: HomeAssistant, chain: Chain, anvil: Anvil, freezer: FrozenDateTimeFactory
) -> None:
    """The seller offers its export at feed-in + margin; the buyer, importing, is held by its
    budget, fails for want of funds, then bids halfway to retail - margin; the sensors count the
    delivered energy's savings against the grid, less the fees, exactly."""
    meter = reported_meter(chain, BUYER.address, wh=5000)
    hass.states.async_set("sensor.eth_eur", "2", {"unit_of_measurement": "EUR"})
    hass.states.async_set("sensor.feed_in", "80", {"unit_of_measurement": "EUR/MWh"})
    hass.states.async_set("sensor.seller_export", "2", {"unit_of_measurement": "kW"})
    hass.states.async_set("sensor.buyer_export", "-1000", {"unit_of_measurement": "W"})
    money = {CONF_EXCHANGE_RATE_ENTITY: "sensor.eth_eur", CONF_FEED_IN_PRICE_ENTITY: "sensor.feed_in"}
    seller = await setup_entry(
        hass, market_entry(chain, anvil.url, SELLER, options={**money, CONF_GRID_EXPORT: "sensor.seller_export"})
    )
    buyer = await setup_entry(
        hass,
        market_entry(
            chain,
            anvil.url,
            BUYER,
            meter=meter.address,
            options={**money, CONF_GRID_EXPORT: "sensor.buyer_export", CONF_DAILY_BUDGET: 0.1},
        ),
    )
    decisions = async_capture_events(hass, EVENT_AUTOPILOT_DECISION)

    def of(entry: Any, action: str | None = None) -> list[Any]:
        return [
            e
            for e in decisions
            if e.data["config_entry_id"] == entry.entry_id and (action is None or e.data["action"] == action)
        ]

    await switch(hass, f"switch.{SELLER_ID}_autopilot", SERVICE_TURN_ON)
    assert state(hass, f"switch.{SELLER_ID}_autopilot") == STATE_ON
    [offer] = of(seller)
    assert offer.data["action"] == "offer"
    assert "2000 Wh of surplus" in offer.data["reason"]
    assert "feed-in" in offer.data["reason"]
    # Amounts in the reason are written in the market's currency, not in its smallest unit.
    assert f"from {offer.data['price_per_kwh']:.4f} ETH/kWh" in offer.data["reason"]
    assert str(START_PRICE) not in offer.data["reason"]
    assert (offer.data["energy_kwh"], offer.data["price"], offer.data["currency"]) == (2.0, 0.15, "EUR")
    on_chain = chain.offer(1)
    assert (on_chain["energyWh"], on_chain["startPricePerKWh"]) == (2000, START_PRICE)
    seller_fees = fee_eur(chain, [offer])
    assert offer.data["fee"] == float(seller_fees)

    # Importing 1 kW: 1 kWh over the horizon, but 0.19 EUR of energy passes a budget of 0.10.
    await poll(hass, freezer)
    await switch(hass, f"switch.{BUYER_ID}_autopilot", SERVICE_TURN_ON)
    [held] = of(buyer)
    assert held.data["action"] == "nothing"
    assert "daily budget" in held.data["reason"]
    assert chain.offer(1)["highestPricePerKWh"] == 0

    # A bid the wallet cannot pay for fails, is fired with its error, and the loop goes on.
    hass.config_entries.async_update_entry(buyer, options={**buyer.options, CONF_DAILY_BUDGET: 5})
    set_balance(chain, BUYER.address, 10**15)
    await poll(hass, freezer)
    [failed] = of(buyer, "bid")
    assert failed.data["error"]
    assert failed.data["transaction_hash"] is None
    assert chain.offer(1)["highestPricePerKWh"] == 0
    # The seller's surplus is all on offer: it says so once, not on every update.
    assert [e.data["action"] for e in of(seller)] == ["offer", "nothing"]
    assert of(seller)[-1].data["reason"].startswith("no surplus to offer")
    await poll(hass, freezer)
    assert len(of(seller)) == 2

    set_balance(chain, BUYER.address, START_BALANCE)
    await poll(hass, freezer)
    bid = of(buyer, "bid")[-1]
    assert bid.data["error"] is None
    assert bid.data["price_per_kwh"] == 0.095
    assert chain.offer(1)["highestPricePerKWh"] == BID_PRICE <= LIMIT
    assert "halfway" in bid.data["reason"]
    buyer_fees = fee_eur(chain, [bid])

    chain.travel(901)
    chain.tx(chain.market.functions.finalize(1), chain.registrar)
    await poll(hass, freezer)
    chain.settle(chain.sign(meter, 5500, chain.now() + 1))
    await poll(hass, freezer)
    # Delivering 0.5 kWh, the buyer will likely leave 500 Wh of the seller's surplus: offered anew;
    # and the credit is withdrawn, once a day.
    assert [e.data["action"] for e in of(seller)] == ["offer", "nothing", "offer", "withdraw"]
    seller_fees = fee_eur(chain, [e for e in of(seller) if e.data["transaction_hash"]])

    assert Decimal(state(hass, f"sensor.{BUYER_ID}_p2p_price")) == Decimal("0.19")
    assert Decimal(state(hass, f"sensor.{SELLER_ID}_p2p_price")) == Decimal("0.19")
    half = Decimal("0.5")
    expected_buyer = (Decimal("0.30") - Decimal("0.19")) * half - buyer_fees
    expected_seller = (Decimal("0.19") - Decimal("0.08")) * half - seller_fees
    assert Decimal(state(hass, f"sensor.{BUYER_ID}_savings_total")) == expected_buyer
    assert Decimal(state(hass, f"sensor.{BUYER_ID}_savings_today")) == expected_buyer
    assert Decimal(state(hass, f"sensor.{SELLER_ID}_savings_total")) == expected_seller
    assert Decimal(state(hass, f"sensor.{BUYER_ID}_autopilot_fees_paid")) == buyer_fees
    assert Decimal(state(hass, f"sensor.{SELLER_ID}_autopilot_fees_paid")) == seller_fees

    # Off: no more decisions.
    await switch(hass, f"switch.{SELLER_ID}_autopilot", SERVICE_TURN_OFF)
    assert state(hass, f"switch.{SELLER_ID}_autopilot") == STATE_OFF
    count = len(of(seller))
    hass.states.async_set("sensor.seller_export", "5", {"unit_of_measurement": "kW"})
    await poll(hass, freezer)
    assert len(of(seller)) == count


async def test_a_small_import_buys_for_longer(
    hass: HomeAssistant, chain: Chain, anvil: Anvil, freezer: FrozenDateTimeFactory
) -> None:
    """Importing 400 W, an hour's need (400 Wh) of a 1.2 kWh offer is too small for the fees (the
    bid, its close and the seller's offer); the autopilot looks further ahead and bids for a
    longer horizon, and its connection is kept open for those timesteps, then closed."""
    eth_price = 20  # EUR: with the node's 1-2 gwei, fees are a few % of an hour's trade
    meter = reported_meter(chain, BUYER.address, wh=5000)
    start = 150 * WEI // 1000 // eth_price  # 0.15 EUR per kWh, in wei
    chain.create_offer(SELLER.address, 1200, start, 600)
    hass.states.async_set("sensor.eth_eur", str(eth_price), {"unit_of_measurement": "EUR"})
    hass.states.async_set("sensor.buyer_export", "-400", {"unit_of_measurement": "W"})
    options = {CONF_EXCHANGE_RATE_ENTITY: "sensor.eth_eur", CONF_GRID_EXPORT: "sensor.buyer_export"}
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address, options=options))
    decisions = async_capture_events(hass, EVENT_AUTOPILOT_DECISION)
    await switch(hass, f"switch.{BUYER_ID}_autopilot", SERVICE_TURN_ON)
    [bid] = [e for e in decisions if e.data["action"] == "bid"]
    steps = int(re.search(r"of the next (\d+) timesteps' need", bid.data["reason"]).group(1))  # type: ignore[union-attr]
    assert 4 < steps <= 12  # an hour is 4 timesteps; 12 take the whole offer
    assert chain.offer(1)["highestBidder"] == BUYER.address

    chain.travel(601)
    chain.tx(chain.market.functions.finalize(1), chain.registrar)
    await poll(hass, freezer)
    for _ in range(steps - 1):
        await poll(hass, freezer, seconds=900)
    assert not [e for e in decisions if e.data["action"] == "close"]  # an hour's horizon would have closed it
    await poll(hass, freezer, seconds=900)
    [close] = [e for e in decisions if e.data["action"] == "close"]
    assert "the timesteps it was bought for are over" in close.data["reason"]
    assert buyer.entry_id == close.data["config_entry_id"]


async def test_autopilot_restored(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """After a restart the switch is on again with the day's spending, which the budget still counts;
    the savings keep their total; without an ETH price the autopilot says why it waits."""
    meter = reported_meter(chain, BUYER.address)
    chain.create_offer(SELLER.address, 1000, START_PRICE, 600)
    today = dt_util.now().date().isoformat()
    spent = 245 * WEI // 100  # of a budget of 5 EUR at 2 EUR per ETH (2.5 ETH): 0.05 ETH is left
    mock_restore_cache_with_extra_data(
        hass,
        [
            (
                State(f"switch.{BUYER_ID}_autopilot", STATE_ON),
                {"day": today, "spent_today": str(spent), "withdrawn_on": today},
            ),
            (
                State(f"sensor.{BUYER_ID}_savings_total", "1.5"),
                {"total": "1.5", "counted": {}, "day": today},
            ),
        ],
    )
    hass.states.async_set("sensor.house", "1000", {"unit_of_measurement": "W"})
    decisions = async_capture_events(hass, EVENT_AUTOPILOT_DECISION)
    entry = market_entry(chain, anvil.url, BUYER, meter=meter.address, options={CONF_HOUSE_CONSUMPTION: "sensor.house"})
    await setup_entry(hass, entry)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert state(hass, f"switch.{BUYER_ID}_autopilot") == STATE_ON
    assert state(hass, f"sensor.{BUYER_ID}_savings_total") == "1.5"
    assert [e.data["reason"] for e in decisions] == ["no ETH price: set the exchange-rate entity, gas is paid in ETH"]

    hass.states.async_set("sensor.eth_eur", "2", {"unit_of_measurement": "EUR"})
    hass.config_entries.async_update_entry(
        entry, options={**entry.options, CONF_EXCHANGE_RATE_ENTITY: "sensor.eth_eur"}
    )
    await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert state(hass, f"switch.{BUYER_ID}_autopilot") == STATE_ON
    # 1 kWh at 0.095 ETH passes what is left of the day's budget: the spending survived both restarts.
    assert decisions[-1].data["action"] == "nothing"
    assert "daily budget" in decisions[-1].data["reason"]
    assert chain.offer(1)["highestPricePerKWh"] == 0


async def test_autopilot_waits_and_closes(
    hass: HomeAssistant, chain: Chain, anvil: Anvil, freezer: FrozenDateTimeFactory
) -> None:
    """It says why it waits (a price entity without a number, no power reading) once per reason; an
    offer nobody bid on holds the next one back; a connection dearer than retail - margin is
    closed; a new day starts a new budget and today's savings."""
    own_meter = reported_meter(chain, SELLER.address, wh=1000)
    yesterday = (dt_util.now().date() - timedelta(days=1)).isoformat()
    mock_restore_cache_with_extra_data(
        hass,
        [
            (State(f"switch.{SELLER_ID}_autopilot", STATE_ON), {"day": yesterday, "spent_today": "5"}),
            (State(f"sensor.{SELLER_ID}_p2p_price", "0.19"), {}),
        ],
    )
    hass.states.async_set("sensor.eth_eur", "2", {"unit_of_measurement": "EUR"})
    hass.states.async_set("sensor.retail", "unknown")
    options = {CONF_EXCHANGE_RATE_ENTITY: "sensor.eth_eur", CONF_RETAIL_PRICE_ENTITY: "sensor.retail"}
    decisions = async_capture_events(hass, EVENT_AUTOPILOT_DECISION)
    entry = await setup_entry(hass, market_entry(chain, anvil.url, SELLER, meter=own_meter.address, options=options))
    await hass.async_block_till_done(wait_background_tasks=True)
    assert state(hass, f"sensor.{SELLER_ID}_p2p_price") == "0.19"
    reasons = [e.data["reason"] for e in decisions]
    assert reasons == ["the retail or feed-in price entity has no price now"]
    hass.states.async_set("sensor.retail", "bad")
    await poll(hass, freezer)
    assert len(decisions) == 1
    hass.states.async_set("sensor.retail", "0.30")  # no unit: taken as per kWh
    hass.config_entries.async_update_entry(entry, options={**entry.options, CONF_GRID_EXPORT: "sensor.export"})
    await poll(hass, freezer)
    assert decisions[-1].data["reason"] == "the household's power sensors have no reading"

    hass.states.async_set("sensor.export", "2000", {"unit_of_measurement": "W"})
    await poll(hass, freezer)
    assert decisions[-1].data["action"] == "offer"
    chain.travel(901)  # bidding ends without a bid
    await poll(hass, freezer)
    assert "found no buyer" in decisions[-1].data["reason"]

    # A connection bought at twice the limit: closed at once.
    chain.award(RIVAL.address, SELLER.address, own_meter.address, 1000, 2 * LIMIT)
    await poll(hass, freezer)
    [close] = [e for e in decisions if e.data["action"] == "close"]
    assert close.data["error"] is None
    assert "more than retail - margin" in close.data["reason"]
    assert chain.connection(close.data["connection_id"])["status"] != 3  # no longer active

    freezer.tick(timedelta(days=1))
    await poll(hass, freezer)
    last_reset = hass.states.get(f"sensor.{SELLER_ID}_savings_today").attributes["last_reset"]  # type: ignore[union-attr]
    assert last_reset == dt_util.start_of_local_day().isoformat()
