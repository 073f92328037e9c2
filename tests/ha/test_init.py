"""Setup, unload and the node going away and coming back."""

from __future__ import annotations

from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er

from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import SELLER, make_chain, make_token_market, market_entry, setup_entry


async def test_setup_and_unload(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """Setting up creates the wallet device; unloading leaves no state behind."""
    entry = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    assert entry.state is ConfigEntryState.LOADED
    devices = dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)
    assert [device.name for device in devices] == [entry.title]
    balance = hass.states.get("sensor.energy_kart_0x71be_5788_wallet_balance")
    assert balance is not None
    assert balance.state == "100.0"

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED  # type: ignore[comparison-overlap]
    for entity in er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id):
        state = hass.states.get(entity.entity_id)
        assert state is None or state.state == STATE_UNAVAILABLE
    assert not hass.config_entries.async_loaded_entries("energykart")


async def test_setup_refuses_a_currency_it_cannot_show(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """An entry whose contract tells no currency (here: a token, not a market), or whose market's
    token tells no symbol, fails to set up with the reason, for good rather than retrying."""
    token = make_token_market(anvil.url).token
    not_a_token = make_chain(anvil.url, currency=chain.market.address)
    for entry, reason in (
        (market_entry(chain, anvil.url, SELLER, contract=token.address), "wrong_contract"),
        (market_entry(not_a_token, anvil.url, SELLER), "unsupported_currency"),
    ):
        entry.add_to_hass(hass)
        assert not await hass.config_entries.async_setup(entry.entry_id)
        assert entry.state is ConfigEntryState.SETUP_ERROR
        assert entry.error_reason_translation_key == reason
