"""Connection devices hang under the wallet device and go when their connection ends."""

from __future__ import annotations

import logging

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er

from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import BUYER, SELLER, market_entry, poll, reported_meter, setup_entry

PRICE = 10**14  # wei per kWh


def reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What Home Assistant reported about how the integration uses its APIs (deprecations)."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "homeassistant.helpers.frame" and record.levelno >= logging.WARNING
    ]


async def test_connection_devices(
    hass: HomeAssistant, chain: Chain, anvil: Anvil, freezer: FrozenDateTimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Each live connection has a device whose parent is the wallet device, with its entities; a
    connection that ends takes its device and entities with it; nothing deprecated is reported."""
    meter = reported_meter(chain, BUYER.address, wh=1000)
    seller = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    first = chain.award(SELLER.address, BUYER.address, meter.address, 500, PRICE)
    second = chain.award(SELLER.address, BUYER.address, meter.address, 500, PRICE)
    await poll(hass, freezer)

    devices = dr.async_get(hass)
    entities = er.async_get(hass)
    by_name = {device.name: device for device in dr.async_entries_for_config_entry(devices, seller.entry_id)}
    wallet = by_name[seller.title]
    assert {name: device.via_device_id for name, device in by_name.items()} == {
        seller.title: None,
        f"Connection {first} (selling)": wallet.id,
        f"Connection {second} (selling)": wallet.id,
    }
    connection = by_name[f"Connection {first} (selling)"]
    assert sorted(entity.entity_id for entity in er.async_entries_for_device(entities, connection.id, True)) == [
        f"binary_sensor.connection_{first}_selling_delivering",
        f"sensor.connection_{first}_selling_delivered_energy",
        f"sensor.connection_{first}_selling_escrow_left",
        f"sensor.connection_{first}_selling_price",
    ]

    chain.settle(chain.sign(meter, 1500, chain.now() + 1))  # fills the first connection: it ends
    await poll(hass, freezer)
    remaining = dr.async_entries_for_config_entry(devices, seller.entry_id)
    assert sorted(str(device.name) for device in remaining) == sorted([seller.title, f"Connection {second} (selling)"])
    assert devices.async_get(connection.id) is None
    assert er.async_entries_for_device(entities, connection.id, True) == []
    assert hass.states.get(f"binary_sensor.connection_{first}_selling_delivering") is None
    assert reports(caplog) == []
