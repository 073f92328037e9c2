"""Switches: the Autopilot of the wallet, and one per connection where this account buys
(turning it off closes the connection)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeassistant.components.switch import SwitchEntity
from homeassistant.const import STATE_ON
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.restore_state import ExtraStoredData, RestoreEntity

from .autopilot_runner import AutopilotRunner
from .const import DOMAIN
from .contract import Status
from .coordinator import EnergyKartConfigEntry, EnergyKartCoordinator
from .entity import EnergyKartConnectionEntity, EnergyKartEntity
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
    async_add_entities([AutopilotSwitch(coordinator)])

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


@dataclass(frozen=True, slots=True)
class AutopilotStoredData(ExtraStoredData):
    """The autopilot's day across restarts: what it spent, when it last withdrew."""

    runner: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.runner)


class AutopilotSwitch(EnergyKartEntity, SwitchEntity, RestoreEntity):
    """While on, the autopilot trades for the household on every update of the market."""

    _attr_translation_key = "autopilot"

    def __init__(self, coordinator: EnergyKartCoordinator) -> None:
        super().__init__(coordinator, "autopilot")
        self.runner = AutopilotRunner(coordinator)
        self._attr_is_on = False

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        if (last := await self.async_get_last_state()) is not None:
            self._attr_is_on = last.state == STATE_ON
        if (stored := await self.async_get_last_extra_data()) is not None:
            self.runner.restore(stored.as_dict())
        if self._attr_is_on:
            self.runner.schedule()

    @property
    def extra_restore_state_data(self) -> AutopilotStoredData:
        return AutopilotStoredData(self.runner.as_dict())

    @callback
    def _handle_coordinator_update(self) -> None:
        super()._handle_coordinator_update()
        if self._attr_is_on:
            self.runner.schedule()

    async def async_turn_on(self, **kwargs: Any) -> None:
        self._attr_is_on = True
        self.async_write_ha_state()
        self.runner.schedule()

    async def async_turn_off(self, **kwargs: Any) -> None:
        self._attr_is_on = False
        self.async_write_ha_state()
