"""Base entities: of the wallet device, and of a device per live connection."""

from __future__ import annotations

from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .contract import Connection
from .coordinator import EnergyKartCoordinator
from .devices import connection_device_info, wallet_device_info


class EnergyKartEntity(CoordinatorEntity[EnergyKartCoordinator]):
    """An entity of the wallet device."""

    _attr_has_entity_name = True

    def __init__(self, coordinator: EnergyKartCoordinator, key: str) -> None:
        super().__init__(coordinator)
        self._attr_unique_id = f"{coordinator.config_entry.unique_id}-{key}"
        self._attr_device_info = wallet_device_info(coordinator.config_entry)


class EnergyKartConnectionEntity(CoordinatorEntity[EnergyKartCoordinator]):
    """An entity of one connection's device; unavailable once the connection ended.

    The coordinator registers the device under the wallet device before its entities are added.
    """

    _attr_has_entity_name = True

    def __init__(self, coordinator: EnergyKartCoordinator, connection_id: int, key: str) -> None:
        super().__init__(coordinator)
        entry = coordinator.config_entry
        self.connection_id = connection_id
        self._attr_unique_id = f"{entry.unique_id}_{connection_id}-{key}"
        self._attr_device_info = connection_device_info(
            entry, connection_id, coordinator.role_in(coordinator.data.connections[connection_id])
        )

    @property
    def connection(self) -> Connection | None:
        return self.coordinator.data.connections.get(self.connection_id)

    @property
    def available(self) -> bool:
        return super().available and self.connection is not None
