"""Sensors: the wallet and market, the household's surplus, and each connection's delivery."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import homeassistant.const as ha_const
from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import (
    STATE_UNAVAILABLE,
    STATE_UNKNOWN,
    EntityCategory,
    UnitOfEnergy,
    UnitOfPower,
)
from homeassistant.core import Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.event import async_track_state_change_event
from homeassistant.helpers.typing import StateType
from homeassistant.util.unit_conversion import PowerConverter

from .const import CONF_BATTERY_SOC, CONF_GRID_EXPORT, CONF_HOUSE_CONSUMPTION, CONF_SOLAR_POWER
from .contract import Connection
from .coordinator import EnergyKartConfigEntry, EnergyKartCoordinator, EnergyKartData
from .currency import NATIVE, Currency
from .entity import EnergyKartConnectionEntity, EnergyKartEntity

PARALLEL_UPDATES = 0
# The unit of percentages: UnitOfRatio.PERCENTAGE where Home Assistant has it (2026.x, whose docs
# deprecate the PERCENTAGE constant), else PERCENTAGE (2025.x has no UnitOfRatio). Its plain value
# "%" either way, so the state and its statistics carry the same unit on every version.
_RATIO = getattr(ha_const, "UnitOfRatio", None)
PERCENT: str = _RATIO.PERCENTAGE.value if _RATIO is not None else ha_const.PERCENTAGE


class Money(StrEnum):
    """What a sensor's value is, when it is money; its value_fn gives it in smallest units."""

    AMOUNT = "amount"  # of the market's currency
    PRICE = "price"  # of the market's currency per kWh
    GAS = "gas"  # of the chain's native coin, which pays for gas in either kind of market


@dataclass(frozen=True, kw_only=True)
class EnergyKartSensorEntityDescription(SensorEntityDescription):
    """A wallet or market sensor, read from the coordinator's data."""

    value_fn: Callable[[EnergyKartData], StateType]
    money: Money | None = None


@dataclass(frozen=True, kw_only=True)
class ConnectionSensorEntityDescription(SensorEntityDescription):
    """A sensor of one connection."""

    value_fn: Callable[[Connection], StateType]
    money: Money | None = None


def _kwh(wh: int | None) -> float | None:
    return None if wh is None else wh / 1000


def _best_open_price(data: EnergyKartData) -> int | None:
    prices = [offer.min_next_bid for offer in data.open_offers if offer.seller != data.account]
    return min(prices) if prices else None


def _highest_bid_on_mine(data: EnergyKartData) -> int | None:
    bids = [offer.highest_price for offer in data.my_offers.values() if offer.highest_price]
    return max(bids) if bids else None


def _in_currency[D: EnergyKartSensorEntityDescription | ConnectionSensorEntityDescription](
    description: D, market: Currency
) -> D:
    """The description with the unit and display precision of its money: `EURe`, `EURe/kWh`, `ETH`."""
    if description.money is None:
        return description
    currency = NATIVE if description.money is Money.GAS else market
    if description.money is Money.PRICE:
        return replace(
            description,
            native_unit_of_measurement=currency.price_unit,
            suggested_display_precision=min(currency.decimals, 9),
        )
    return replace(
        description, native_unit_of_measurement=currency.symbol, suggested_display_precision=min(currency.decimals, 6)
    )


def _shown(value: StateType, money: Money | None, market: Currency) -> StateType:
    """A value_fn's value as the state shows it: money in its currency rather than smallest units."""
    if money is None or value is None:
        return value
    return (NATIVE if money is Money.GAS else market).value(int(value))


SENSORS: tuple[EnergyKartSensorEntityDescription, ...] = (
    EnergyKartSensorEntityDescription(
        key="wallet_balance",
        translation_key="wallet_balance",
        state_class=SensorStateClass.MEASUREMENT,
        value_fn=lambda data: data.balance_wei,
        money=Money.AMOUNT,
    ),
    EnergyKartSensorEntityDescription(
        key="credit",
        translation_key="credit",
        state_class=SensorStateClass.MEASUREMENT,
        value_fn=lambda data: data.credit_wei,
        money=Money.AMOUNT,
    ),
    EnergyKartSensorEntityDescription(
        key="escrow",
        translation_key="escrow",
        state_class=SensorStateClass.MEASUREMENT,
        value_fn=lambda data: data.escrow_wei,
        money=Money.AMOUNT,
    ),
    EnergyKartSensorEntityDescription(
        key="best_open_price",
        translation_key="best_open_price",
        value_fn=_best_open_price,
        money=Money.PRICE,
    ),
    EnergyKartSensorEntityDescription(
        key="highest_bid_on_my_offer",
        translation_key="highest_bid_on_my_offer",
        value_fn=_highest_bid_on_mine,
        money=Money.PRICE,
    ),
    EnergyKartSensorEntityDescription(
        key="energy_sold",
        translation_key="energy_sold",
        device_class=SensorDeviceClass.ENERGY,
        state_class=SensorStateClass.TOTAL_INCREASING,
        native_unit_of_measurement=UnitOfEnergy.KILO_WATT_HOUR,
        suggested_display_precision=3,
        value_fn=lambda data: _kwh(data.energy_sold_wh),
    ),
    EnergyKartSensorEntityDescription(
        key="energy_bought",
        translation_key="energy_bought",
        device_class=SensorDeviceClass.ENERGY,
        state_class=SensorStateClass.TOTAL_INCREASING,
        native_unit_of_measurement=UnitOfEnergy.KILO_WATT_HOUR,
        suggested_display_precision=3,
        value_fn=lambda data: _kwh(data.energy_bought_wh),
    ),
    EnergyKartSensorEntityDescription(
        key="earnings",
        translation_key="earnings",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value_fn=lambda data: data.earnings_wei,
        money=Money.AMOUNT,
    ),
    EnergyKartSensorEntityDescription(
        key="spending",
        translation_key="spending",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value_fn=lambda data: data.spending_wei,
        money=Money.AMOUNT,
    ),
    EnergyKartSensorEntityDescription(
        key="block",
        translation_key="block",
        entity_category=EntityCategory.DIAGNOSTIC,
        entity_registry_enabled_default=False,
        value_fn=lambda data: data.block,
    ),
)

# In a token market the wallet balance is of the token; gas is still paid in the native coin.
GAS_BALANCE = EnergyKartSensorEntityDescription(
    key="gas_balance",
    translation_key="gas_balance",
    state_class=SensorStateClass.MEASUREMENT,
    entity_category=EntityCategory.DIAGNOSTIC,
    value_fn=lambda data: data.gas_balance_wei,
    money=Money.GAS,
)

CONNECTION_SENSORS: tuple[ConnectionSensorEntityDescription, ...] = (
    ConnectionSensorEntityDescription(
        key="delivered",
        translation_key="delivered",
        device_class=SensorDeviceClass.ENERGY,
        state_class=SensorStateClass.TOTAL_INCREASING,
        native_unit_of_measurement=UnitOfEnergy.KILO_WATT_HOUR,
        suggested_display_precision=3,
        value_fn=lambda connection: connection.delivered_wh / 1000,
    ),
    ConnectionSensorEntityDescription(
        key="price",
        translation_key="price",
        value_fn=lambda connection: connection.price,
        money=Money.PRICE,
    ),
    ConnectionSensorEntityDescription(
        key="connection_escrow",
        translation_key="connection_escrow",
        entity_category=EntityCategory.DIAGNOSTIC,
        entity_registry_enabled_default=False,
        value_fn=lambda connection: connection.escrow_wei,
        money=Money.AMOUNT,
    ),
)


async def async_setup_entry(
    hass: HomeAssistant, entry: EnergyKartConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    """Set up the sensors; connection sensors come and go with the connections."""
    coordinator = entry.runtime_data
    descriptions = SENSORS if coordinator.currency.is_native else (*SENSORS, GAS_BALANCE)
    entities: list[SensorEntity] = [EnergyKartSensor(coordinator, description) for description in descriptions]
    entities.append(OpenOffersSensor(coordinator))
    if entry.options.get(CONF_GRID_EXPORT) or (
        entry.options.get(CONF_SOLAR_POWER) and entry.options.get(CONF_HOUSE_CONSUMPTION)
    ):
        entities.append(SolarSurplusSensor(coordinator))
    if entry.options.get(CONF_BATTERY_SOC):
        entities.append(BatterySocSensor(coordinator))
    async_add_entities(entities)

    known: set[int] = set()

    @callback
    def add_connections() -> None:
        live = set(coordinator.data.connections)
        known.intersection_update(live)  # an ended connection's entities went with its device
        new = live - known
        known.update(new)
        async_add_entities(
            ConnectionSensor(coordinator, connection_id, description)
            for connection_id in sorted(new)
            for description in CONNECTION_SENSORS
        )

    add_connections()
    entry.async_on_unload(coordinator.async_add_listener(add_connections))


class EnergyKartSensor(EnergyKartEntity, SensorEntity):
    """A sensor of the wallet device."""

    entity_description: EnergyKartSensorEntityDescription

    def __init__(self, coordinator: EnergyKartCoordinator, description: EnergyKartSensorEntityDescription) -> None:
        super().__init__(coordinator, description.key)
        self.entity_description = _in_currency(description, coordinator.currency)

    @property
    def native_value(self) -> StateType:
        description = self.entity_description
        return _shown(description.value_fn(self.coordinator.data), description.money, self.coordinator.currency)


class OpenOffersSensor(EnergyKartEntity, SensorEntity):
    """How many offers are open for bids, with the first page of them as attributes."""

    _attr_translation_key = "open_offers"
    _attr_state_class = SensorStateClass.MEASUREMENT
    _unrecorded_attributes = frozenset({"offers"})

    def __init__(self, coordinator: EnergyKartCoordinator) -> None:
        super().__init__(coordinator, "open_offers")

    @property
    def native_value(self) -> int:
        return len(self.coordinator.data.open_offers)

    @property
    def extra_state_attributes(self) -> dict[str, Any]:
        return {
            "currency": self.coordinator.currency.symbol,
            "offers": [self.coordinator.describe_offer(offer) for offer in self.coordinator.data.open_offers],
        }


class ConnectionSensor(EnergyKartConnectionEntity, SensorEntity):
    """A sensor of one connection."""

    entity_description: ConnectionSensorEntityDescription

    def __init__(
        self, coordinator: EnergyKartCoordinator, connection_id: int, description: ConnectionSensorEntityDescription
    ) -> None:
        super().__init__(coordinator, connection_id, description.key)
        self.entity_description = _in_currency(description, coordinator.currency)

    @property
    def native_value(self) -> StateType:
        connection, description = self.connection, self.entity_description
        currency = self.coordinator.currency
        return None if connection is None else _shown(description.value_fn(connection), description.money, currency)


class _SourceSensor(EnergyKartEntity, SensorEntity):
    """A sensor computed from the household's own entities, updated as they change."""

    _attr_state_class = SensorStateClass.MEASUREMENT
    _sources: tuple[str, ...] = ()

    def __init__(self, coordinator: EnergyKartCoordinator, key: str) -> None:
        super().__init__(coordinator, key)
        self._source_ids = [
            entity_id
            for option in self._sources
            if (entity_id := coordinator.config_entry.options.get(option)) is not None
        ]

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(async_track_state_change_event(self.hass, self._source_ids, self._source_changed))

    @callback
    def _source_changed(self, event: Event[EventStateChangedData]) -> None:
        self.async_write_ha_state()

    def _used_sources(self) -> list[str]:
        """The entities this sensor's value is computed from, as configured now."""
        return self._source_ids

    @property
    def available(self) -> bool:
        """Unavailable while a source it is computed from is missing or unavailable.

        A source that is `unknown` (or not a number) leaves the sensor available with an unknown
        value: the entity behind it is there, it just has no reading. The market's own state
        does not matter: these sensors read only the household's entities.
        """
        for entity_id in self._used_sources():
            state = self.hass.states.get(entity_id)
            if state is None or state.state == STATE_UNAVAILABLE:
                return False
        return True

    def _value(self, option: str, convert_power: bool = False) -> float | None:
        entity_id = self.coordinator.config_entry.options.get(option)
        state = self.hass.states.get(entity_id) if entity_id else None
        if state is None or state.state in (STATE_UNKNOWN, STATE_UNAVAILABLE):
            return None
        try:
            value = float(state.state)
        except ValueError:
            return None
        unit = state.attributes.get("unit_of_measurement")
        if convert_power and unit in PowerConverter.VALID_UNITS and unit != UnitOfPower.WATT:
            value = PowerConverter.convert(value, unit, UnitOfPower.WATT)
        return value


class SolarSurplusSensor(_SourceSensor):
    """Power the house does not use: the grid export, or solar power minus consumption."""

    _attr_translation_key = "solar_surplus"
    _attr_device_class = SensorDeviceClass.POWER
    _attr_native_unit_of_measurement = UnitOfPower.WATT
    _attr_suggested_display_precision = 0
    _sources = (CONF_GRID_EXPORT, CONF_SOLAR_POWER, CONF_HOUSE_CONSUMPTION)

    def __init__(self, coordinator: EnergyKartCoordinator) -> None:
        super().__init__(coordinator, "solar_surplus")

    def _used_sources(self) -> list[str]:
        """The grid export when it is configured (solar and consumption are then not read)."""
        export = self.coordinator.config_entry.options.get(CONF_GRID_EXPORT)
        return [export] if export else self._source_ids

    @property
    def native_value(self) -> float | None:
        if self.coordinator.config_entry.options.get(CONF_GRID_EXPORT):
            export = self._value(CONF_GRID_EXPORT, convert_power=True)
            return None if export is None else max(export, 0.0)
        solar = self._value(CONF_SOLAR_POWER, convert_power=True)
        consumption = self._value(CONF_HOUSE_CONSUMPTION, convert_power=True)
        if solar is None or consumption is None:
            return None
        return max(solar - consumption, 0.0)


class BatterySocSensor(_SourceSensor):
    """The household battery's state of charge, next to the market."""

    _attr_translation_key = "battery_soc"
    _attr_device_class = SensorDeviceClass.BATTERY
    _attr_native_unit_of_measurement = PERCENT
    _attr_suggested_display_precision = 0
    _sources = (CONF_BATTERY_SOC,)

    def __init__(self, coordinator: EnergyKartCoordinator) -> None:
        super().__init__(coordinator, "battery_soc")

    @property
    def native_value(self) -> float | None:
        return self._value(CONF_BATTERY_SOC)
