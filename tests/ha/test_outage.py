"""The node going away: entities unavailable, logged once when lost and once when back."""

from __future__ import annotations

from pathlib import Path

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError

from custom_components.energykart.const import DOMAIN
from devchain.anvil import Anvil

from .conftest import SELLER, make_chain, market_entry, poll, setup_entry

BALANCE = "sensor.energy_kart_0x71be_5788_wallet_balance"


async def test_outage_and_recovery(
    hass: HomeAssistant, tmp_path: Path, freezer: FrozenDateTimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Stop the node, then start it again on the same port with its state."""
    state_file = tmp_path / "anvil-state.json"
    node = Anvil(extra_args=("--state", str(state_file))).start()
    try:
        chain = make_chain(node.url)
        entry = await setup_entry(hass, market_entry(chain, node.url, SELLER))
        assert hass.states.get(BALANCE).state == "100.0"  # type: ignore[union-attr]

        node.stop()
        caplog.clear()
        await poll(hass, freezer)
        await poll(hass, freezer)
        assert hass.states.get(BALANCE).state == STATE_UNAVAILABLE  # type: ignore[union-attr]
        assert caplog.text.count("Error fetching energykart data") == 1
        with pytest.raises(HomeAssistantError) as caught:
            await hass.services.async_call(
                DOMAIN, "withdraw", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
            )
        assert caught.value.translation_key == "node_unreachable"
        with pytest.raises(HomeAssistantError) as caught:
            await hass.services.async_call(
                DOMAIN,
                "bid",
                {"config_entry_id": entry.entry_id, "offer_id": 1, "price": 1},
                blocking=True,
                return_response=True,
            )

        node = Anvil(port=node.port, extra_args=("--state", str(state_file))).start()
        await poll(hass, freezer)
        await poll(hass, freezer)
        assert hass.states.get(BALANCE).state == "100.0"  # type: ignore[union-attr]
        assert caplog.text.count("Fetching energykart data recovered") == 1
    finally:
        node.stop()
