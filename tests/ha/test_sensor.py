"""Entity states (snapshot), the household's source sensors, and diagnostics redaction."""

from __future__ import annotations

import json
from typing import Any

from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from syrupy.assertion import SnapshotAssertion

from custom_components.energykart.const import (
    CONF_BATTERY_SOC,
    CONF_GRID_EXPORT,
    CONF_HOUSE_CONSUMPTION,
    CONF_SOLAR_POWER,
)
from custom_components.energykart.diagnostics import async_get_config_entry_diagnostics
from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import BUYER, RIVAL, SELLER, make_token_market, market_entry, poll, reported_meter, setup_entry, state


def entity_states(hass: HomeAssistant, entry_id: str) -> list[dict[str, Any]]:
    """States and registry settings of an entry's entities, without what varies between runs."""
    out = []
    for entity in sorted(er.async_entries_for_config_entry(er.async_get(hass), entry_id), key=lambda e: e.entity_id):
        state = hass.states.get(entity.entity_id)
        # Home Assistant 2026.x keys attributes with StrEnum members where 2025.x has plain strings:
        # the snapshot holds the strings, whichever version runs.
        attributes = {str(key): value for key, value in state.attributes.items()} if state else {}
        if "offers" in attributes:
            attributes["offers"] = [{**offer, "bidding_ends": "<chain time>"} for offer in attributes["offers"]]
        if "last_reset" in attributes:
            attributes["last_reset"] = "<local midnight>"
        out.append(
            {
                "entity_id": entity.entity_id,
                "disabled_by": entity.disabled_by,
                "entity_category": entity.entity_category,
                "translation_key": entity.translation_key,
                "state": state.state if state else None,
                "attributes": attributes,
            }
        )
    return out


async def test_entity_states(hass: HomeAssistant, chain: Chain, anvil: Anvil, snapshot: SnapshotAssertion) -> None:
    """A watch-only wallet next to two open offers, with grid export and battery sources."""
    chain.tx(chain.market.functions.createOffer(1500, 2 * 10**13, 600), SELLER.address)
    chain.tx(chain.market.functions.createOffer(3000, 10**13, 600), BUYER.address)
    hass.states.async_set("sensor.grid_export", "1.25", {"unit_of_measurement": "kW"})
    hass.states.async_set("sensor.battery", "81", {"unit_of_measurement": "%"})
    entry = await setup_entry(
        hass,
        market_entry(
            chain,
            anvil.url,
            RIVAL,
            trading=False,
            options={CONF_GRID_EXPORT: "sensor.grid_export", CONF_BATTERY_SOC: "sensor.battery"},
        ),
    )
    assert entity_states(hass, entry.entry_id) == snapshot


async def test_entity_states_in_a_token_market(hass: HomeAssistant, anvil: Anvil, snapshot: SnapshotAssertion) -> None:
    """A watch-only wallet in a market settling in a 6-decimal EURe: money in EURe (scaled by
    10**6), prices in EURe/kWh, and the gas balance in the chain's coin."""
    market = make_token_market(anvil.url, decimals=6)
    market.chain.tx(market.chain.market.functions.createOffer(1500, market.units("0.25"), 600), SELLER.address)
    entry = await setup_entry(hass, market_entry(market.chain, anvil.url, RIVAL, trading=False))
    assert entity_states(hass, entry.entry_id) == snapshot


async def test_solar_surplus_from_solar_and_consumption(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """Without a grid export sensor the surplus is solar power minus consumption, never negative."""
    hass.states.async_set("sensor.solar", "3.2", {"unit_of_measurement": "kW"})
    hass.states.async_set("sensor.house", "1200", {"unit_of_measurement": "W"})
    await setup_entry(
        hass,
        market_entry(
            chain, anvil.url, SELLER, options={CONF_SOLAR_POWER: "sensor.solar", CONF_HOUSE_CONSUMPTION: "sensor.house"}
        ),
    )
    surplus = "sensor.energy_kart_0x71be_5788_solar_surplus"
    assert hass.states.get(surplus).state == "2000.0"  # type: ignore[union-attr]
    hass.states.async_set("sensor.house", "4000", {"unit_of_measurement": "W"})
    await hass.async_block_till_done()
    assert hass.states.get(surplus).state == "0.0"  # type: ignore[union-attr]
    hass.states.async_set("sensor.solar", "unavailable")
    await hass.async_block_till_done()
    assert state(hass, surplus) == "unavailable"
    hass.states.async_set("sensor.solar", "unknown")
    await hass.async_block_till_done()
    assert state(hass, surplus) == "unknown"
    hass.states.async_set("sensor.solar", "bad")
    await hass.async_block_till_done()
    assert state(hass, surplus) == "unknown"
    hass.states.async_set("sensor.solar", "3.2", {"unit_of_measurement": "kW"})
    await hass.async_block_till_done()
    assert state(hass, surplus) == "0.0"


async def test_source_sensors_unavailable(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """The surplus and battery sensors are unavailable while their sources are missing or
    unavailable, and come back with them; with a grid export configured, only it matters."""
    options = {
        CONF_GRID_EXPORT: "sensor.export",
        CONF_SOLAR_POWER: "sensor.solar",
        CONF_HOUSE_CONSUMPTION: "sensor.house",
        CONF_BATTERY_SOC: "sensor.battery",
    }
    hass.states.async_set("sensor.solar", "unavailable")
    await setup_entry(hass, market_entry(chain, anvil.url, SELLER, options=options))
    surplus = "sensor.energy_kart_0x71be_5788_solar_surplus"
    battery = "sensor.energy_kart_0x71be_5788_battery_state_of_charge"
    assert state(hass, surplus) == "unavailable"  # the grid export does not exist yet
    assert state(hass, battery) == "unavailable"
    hass.states.async_set("sensor.export", "0.5", {"unit_of_measurement": "kW"})
    hass.states.async_set("sensor.battery", "64", {"unit_of_measurement": "%"})
    await hass.async_block_till_done()
    assert state(hass, surplus) == "500.0"  # solar is unavailable, but the export is what is read
    assert state(hass, battery) == "64.0"
    hass.states.async_set("sensor.export", "unavailable")
    hass.states.async_set("sensor.battery", "unavailable")
    await hass.async_block_till_done()
    assert state(hass, surplus) == "unavailable"
    assert state(hass, battery) == "unavailable"
    hass.states.async_set("sensor.battery", "unknown")
    await hass.async_block_till_done()
    assert state(hass, battery) == "unknown"


async def test_diagnostics(hass: HomeAssistant, chain: Chain, anvil: Anvil, freezer: FrozenDateTimeFactory) -> None:
    """Diagnostics hold neither the key nor any address or URL."""
    meter = reported_meter(chain, BUYER.address)
    chain.tx(chain.market.functions.createOffer(1000, 10**13, 60), SELLER.address)
    entry = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    chain.tx(chain.market.functions.bid(1, 10**13, meter.address), BUYER.address, value=chain.escrow_for(1, 10**13))
    chain.travel(61)
    chain.tx(chain.market.functions.finalize(1), chain.registrar)
    await poll(hass, freezer)
    diagnostics = await async_get_config_entry_diagnostics(hass, entry)
    text = json.dumps(diagnostics, default=str).lower()
    for secret in (
        bytes(BUYER.key).hex(),
        BUYER.address,
        SELLER.address,
        meter.address,
        chain.market.address,
        anvil.url,
    ):
        assert secret.lower().removeprefix("0x") not in text
    assert diagnostics["entry"]["data"]["private_key"] == "**REDACTED**"
    assert diagnostics["data"]["connections"][0]["buyer"] == "**REDACTED**"
    assert diagnostics["data"]["connections"][0]["delivered_wh"] == 0
