"""The devices of an entry: the wallet, and one per live connection under it.

A connection device names the wallet device as its parent by device id (`via_device_id`), set in
the device registry: DeviceInfo's `via_device` is deprecated from Home Assistant 2026.11, and the
DeviceInfo of 2025.x has no `via_device_id`, while the registry takes the device id on both.
"""

from __future__ import annotations

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo

from .const import DOMAIN


def wallet_device_info(entry: ConfigEntry) -> DeviceInfo:
    """The wallet device of a config entry."""
    return DeviceInfo(
        identifiers={(DOMAIN, str(entry.unique_id))},
        name=entry.title,
        manufacturer="Energy-Kart",
        model="Market wallet",
        entry_type=DeviceEntryType.SERVICE,
    )


def connection_device_info(entry: ConfigEntry, connection_id: int, role: str) -> DeviceInfo:
    """The device of one connection, in which this entry's account is the `role` (buyer or seller)."""
    return DeviceInfo(
        identifiers={(DOMAIN, f"{entry.unique_id}_{connection_id}")},
        translation_key=f"connection_{role}",
        translation_placeholders={"id": str(connection_id)},
        name=f"Connection {connection_id}",
        manufacturer="Energy-Kart",
        model="Connection",
        entry_type=DeviceEntryType.SERVICE,
    )


@callback
def async_sync_devices(hass: HomeAssistant, entry: ConfigEntry, roles: dict[int, str]) -> None:
    """Register the wallet device and a device under it for each live connection (`roles`: the
    account's role by connection id); remove the devices of connections that ended, with their entities."""
    registry = dr.async_get(hass)
    wallet_id = str(entry.unique_id)
    prefix = f"{wallet_id}_"
    wallet: dr.DeviceEntry | None = None
    connections: dict[int, dr.DeviceEntry] = {}
    for device in dr.async_entries_for_config_entry(registry, entry.entry_id):
        for domain, identifier in device.identifiers:
            if domain == DOMAIN and identifier == wallet_id:
                wallet = device
            elif domain == DOMAIN and identifier.startswith(prefix):
                connections[int(identifier[len(prefix) :])] = device
    if wallet is None:
        wallet = registry.async_get_or_create(config_entry_id=entry.entry_id, **wallet_device_info(entry))
    for connection_id, device in connections.items():
        if connection_id not in roles:
            registry.async_remove_device(device.id)
    for connection_id, role in roles.items():
        device = connections.get(connection_id) or registry.async_get_or_create(
            config_entry_id=entry.entry_id, **connection_device_info(entry, connection_id, role)
        )
        if device.via_device_id != wallet.id:
            registry.async_update_device(device.id, via_device_id=wallet.id)
