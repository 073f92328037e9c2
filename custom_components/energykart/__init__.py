"""The Energy-Kart integration: trade household solar surplus on an Ethereum energy market."""

from __future__ import annotations

from eth_account import Account
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryAuthFailed
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.typing import ConfigType

from .const import CONF_ACCOUNT, CONF_PRIVATE_KEY, DOMAIN
from .coordinator import EnergyKartConfigEntry, EnergyKartCoordinator, history_store
from .services import async_setup_services

PLATFORMS: list[Platform] = [Platform.BINARY_SENSOR, Platform.BUTTON, Platform.SENSOR, Platform.SWITCH]
CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the actions."""
    async_setup_services(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: EnergyKartConfigEntry) -> bool:
    """Set up an Energy-Kart wallet from a config entry.

    There is no update listener: the flows that change the entry (options, reauthentication,
    reconfiguration) reload it themselves, once.
    """
    if (key := entry.data.get(CONF_PRIVATE_KEY)) and Account.from_key(key).address != entry.data[CONF_ACCOUNT]:
        # The key was replaced outside the flows (a restored backup, an edited storage file): no
        # transaction may be signed by a key that is not the account's, so ask for the right one.
        raise ConfigEntryAuthFailed(
            translation_domain=DOMAIN,
            translation_key="key_mismatch",
            translation_placeholders={"account": entry.data[CONF_ACCOUNT]},
        )
    coordinator = EnergyKartCoordinator(hass, entry)
    await coordinator.async_config_entry_first_refresh()
    entry.runtime_data = coordinator
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: EnergyKartConfigEntry) -> bool:
    """Unload a config entry."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)


async def async_remove_entry(hass: HomeAssistant, entry: EnergyKartConfigEntry) -> None:
    """Forget the entry's history: its log cursor and running totals."""
    await history_store(hass, entry.entry_id).async_remove()
