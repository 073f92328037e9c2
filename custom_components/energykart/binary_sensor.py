"""Binary sensor per connection: is the meter filling it now."""

from __future__ import annotations

from homeassistant.components.binary_sensor import BinarySensorDeviceClass, BinarySensorEntity
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .coordinator import EnergyKartConfigEntry, EnergyKartCoordinator
from .entity import EnergyKartConnectionEntity

PARALLEL_UPDATES = 0


async def async_setup_entry(
    hass: HomeAssistant, entry: EnergyKartConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    """Add a delivering sensor for each connection as it opens."""
    coordinator = entry.runtime_data
    known: set[int] = set()

    @callback
    def add_connections() -> None:
        live = set(coordinator.data.connections)
        known.intersection_update(live)  # an ended connection's entities went with its device
        new = live - known
        known.update(new)
        async_add_entities(DeliveringBinarySensor(coordinator, connection_id) for connection_id in sorted(new))

    add_connections()
    entry.async_on_unload(coordinator.async_add_listener(add_connections))


class DeliveringBinarySensor(EnergyKartConnectionEntity, BinarySensorEntity):
    """On while the buyer's meter is filling this connection."""

    _attr_translation_key = "delivering"
    _attr_device_class = BinarySensorDeviceClass.POWER

    def __init__(self, coordinator: EnergyKartCoordinator, connection_id: int) -> None:
        super().__init__(coordinator, connection_id, "delivering")

    @property
    def is_on(self) -> bool | None:
        connection = self.connection
        return None if connection is None else connection.delivering
