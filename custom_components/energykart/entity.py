"""Base entities: the wallet device and a device per live connection."""

from __future__ import annotations

from homeassistant.config_entries import ConfigEntry
from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import DOMAIN
from .contract import Connection
from .coordinator import EnergyKartCoordinator


def wallet_device_info(entry: ConfigEntry) -> DeviceInfo:
    """The wallet device of a config entry."""
    return DeviceInfo(
        identifiers={(DOMAIN, str(entry.unique_id))},
        name=entry.title,
        manufacturer="Energy-Kart",
        model="Market wallet",
        entry_type=DeviceEntryType.SERVICE,
    )


class EnergyKartEntity(CoordinatorEntity[EnergyKartCoordinator]):
    """An entity of the wallet device."""

    _attr_has_entity_name = True

    def __init__(self, coordinator: EnergyKartCoordinator, key: str) -> None:
        super().__init__(coordinator)
        self._attr_unique_id = f"{coordinator.config_entry.unique_id}-{key}"
        self._attr_device_info = wallet_device_info(coordinator.config_entry)


class EnergyKartConnectionEntity(CoordinatorEntity[EnergyKartCoordinator]):
    """An entity of one connection's device; unavailable once the connection ended."""

    _attr_has_entity_name = True

    def __init__(self, coordinator: EnergyKartCoordinator, connection_id: int, key: str) -> None:
        super().__init__(coordinator)
        wallet_id = str(coordinator.config_entry.unique_id)
        self.connection_id = connection_id
        self._attr_unique_id = f"{wallet_id}_{connection_id}-{key}"
        connection = coordinator.data.connections[connection_id]
        role = "buyer" if connection.buyer == coordinator.account else "seller"
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, f"{wallet_id}_{connection_id}")},
            translation_key=f"connection_{role}",
            translation_placeholders={"id": str(connection_id)},
            name=f"Connection {connection_id}",
            manufacturer="Energy-Kart",
            model="Connection",
            entry_type=DeviceEntryType.SERVICE,
            via_device=(DOMAIN, wallet_id),
        )

    @property
    def connection(self) -> Connection | None:
        return self.coordinator.data.connections.get(self.connection_id)

    @property
    def available(self) -> bool:
        return super().available and self.connection is not None
