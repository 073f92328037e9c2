"""Diagnostics: the entry, the currency and the last update, with the key and every account, meter and
market address redacted (the currency's token is public, and tells what the amounts are in)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant

from .const import CONF_ACCOUNT, CONF_CONTRACT_ADDRESS, CONF_METER_ADDRESS, CONF_PRIVATE_KEY, CONF_RPC_URL
from .coordinator import EnergyKartConfigEntry

TO_REDACT = {
    CONF_PRIVATE_KEY,
    CONF_ACCOUNT,
    CONF_CONTRACT_ADDRESS,
    CONF_METER_ADDRESS,
    CONF_RPC_URL,
    "unique_id",
    "title",
    "seller",
    "buyer",
    "meter",
    "highest_bidder",
}


async def async_get_config_entry_diagnostics(hass: HomeAssistant, entry: EnergyKartConfigEntry) -> dict[str, Any]:
    """Diagnostics of a config entry."""
    coordinator = entry.runtime_data
    data = asdict(coordinator.data)
    return {
        "entry": async_redact_data(entry.as_dict(), TO_REDACT),
        "last_update_success": coordinator.last_update_success,
        "can_trade": coordinator.client.can_trade,
        "currency": asdict(coordinator.currency),
        "bids_with_permit": coordinator.client.takes_permits,
        "data": async_redact_data(
            {
                **data,
                "open_offers": list(data["open_offers"]),
                "my_offers": list(data["my_offers"].values()),
                "connections": list(data["connections"].values()),
            },
            TO_REDACT,
        ),
    }
