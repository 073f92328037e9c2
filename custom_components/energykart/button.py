"""Button to withdraw the account's credit."""

from __future__ import annotations

from homeassistant.components.button import ButtonEntity, ButtonEntityDescription
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .coordinator import EnergyKartConfigEntry, EnergyKartCoordinator
from .entity import EnergyKartEntity
from .services import async_withdraw

PARALLEL_UPDATES = 1

WITHDRAW = ButtonEntityDescription(key="withdraw", translation_key="withdraw")


async def async_setup_entry(
    hass: HomeAssistant, entry: EnergyKartConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    """Add the withdraw button to trading entries."""
    if entry.runtime_data.client.can_trade:
        async_add_entities([WithdrawButton(entry.runtime_data)])


class WithdrawButton(EnergyKartEntity, ButtonEntity):
    """Pay out the withdrawable credit to the wallet."""

    def __init__(self, coordinator: EnergyKartCoordinator) -> None:
        super().__init__(coordinator, WITHDRAW.key)
        self.entity_description = WITHDRAW

    async def async_press(self) -> None:
        await async_withdraw(self.coordinator)
