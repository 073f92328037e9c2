"""Switch per connection where this account buys: turning it off closes the connection."""

from __future__ import annotations

from typing import Any

from homeassistant.components.switch import SwitchEntity
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .const import DOMAIN
from .contract import Status
from .coordinator import EnergyKartConfigEntry, EnergyKartCoordinator
from .entity import EnergyKartConnectionEntity
from .services import async_close_connection

PARALLEL_UPDATES = 1


async def async_setup_entry(
    hass: HomeAssistant, entry: EnergyKartConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    """Add a switch for each connection this account buys on, as it opens."""
    coordinator = entry.runtime_data
    known: set[int] = set()
    if not coordinator.client.can_trade:
        return

    @callback
    def add_connections() -> None:
        live = {
            connection_id
            for connection_id, connection in coordinator.data.connections.items()
            if connection.buyer == coordinator.account
        }
        known.intersection_update(live)  # an ended connection's entities went with its device
        new = live - known
        known.update(new)
        async_add_entities(ConnectionSwitch(coordinator, connection_id) for connection_id in sorted(new))

    add_connections()
    entry.async_on_unload(coordinator.async_add_listener(add_connections))


class ConnectionSwitch(EnergyKartConnectionEntity, SwitchEntity):
    """On while the connection is open; off closes it (for good)."""

    _attr_translation_key = "connection"

    def __init__(self, coordinator: EnergyKartCoordinator, connection_id: int) -> None:
        super().__init__(coordinator, connection_id, "connection")

    @property
    def is_on(self) -> bool | None:
        connection = self.connection
        return None if connection is None else connection.status == Status.ACTIVE

    async def async_turn_on(self, **kwargs: Any) -> None:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="cannot_reopen")

    async def async_turn_off(self, **kwargs: Any) -> None:
        await async_close_connection(self.coordinator, self.connection_id)
