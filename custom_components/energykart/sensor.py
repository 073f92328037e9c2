"""Sensors: the wallet and market, the household's surplus, and each connection's delivery."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
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
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.event import async_track_state_change_event
from homeassistant.helpers.restore_state import ExtraStoredData, RestoreEntity
from homeassistant.helpers.typing import StateType
from homeassistant.util import dt as dt_util
from homeassistant.util.unit_conversion import PowerConverter

from .autopilot_runner import SIGNAL_FEE_PAID
from .const import CONF_BATTERY_SOC, CONF_GRID_EXPORT, CONF_HOUSE_CONSUMPTION, CONF_SOLAR_POWER
from .contract import Connection
from .coordinator import EnergyKartConfigEntry, EnergyKartCoordinator, EnergyKartData
from .currency import NATIVE, Currency
from .entity import EnergyKartConnectionEntity, EnergyKartEntity
from .tariffs import read_money

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
    entities += [P2PPriceSensor(coordinator), SavingsSensor(coordinator, today=True), SavingsSensor(coordinator)]
    if coordinator.client.can_trade:
        entities.append(FeesPaidSensor(coordinator))
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


class P2PPriceSensor(EnergyKartEntity, RestoreEntity, SensorEntity):
    """The price of the account's latest connection in Home Assistant's currency per kWh.

    A price entity for the Energy dashboard's P2P import and export: a unit of `<currency>/kWh`
    and no device class (monetary takes no energy unit). It keeps the last connection's price
    after the connection ends.
    """

    _attr_translation_key = "p2p_price"
    _attr_suggested_display_precision = 4

    def __init__(self, coordinator: EnergyKartCoordinator) -> None:
        super().__init__(coordinator, "p2p_price")
        self._attr_native_unit_of_measurement = f"{coordinator.hass.config.currency}/kWh"
        self._price: Decimal | None = None
        self._connection: tuple[int, str] | None = None

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        last = await self.async_get_last_state()
        if last is not None and (restored := _decimal(last.state)) is not None:
            self._price = restored
        self._update()

    @callback
    def _handle_coordinator_update(self) -> None:
        self._update()
        super()._handle_coordinator_update()

    def _update(self) -> None:
        coordinator = self.coordinator
        connections = coordinator.data.connections
        if not connections:
            return
        latest = connections[max(connections)]
        price = read_money(self.hass, coordinator.config_entry.options, coordinator.currency).to_money(latest.price)
        if price is not None:
            self._price, self._connection = price, (latest.id, coordinator.role_in(latest))

    @property
    def native_value(self) -> Decimal | None:
        return self._price

    @property
    def extra_state_attributes(self) -> dict[str, Any]:
        if self._connection is None:
            return {}
        return {"connection_id": self._connection[0], "role": self._connection[1]}


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except ArithmeticError:
        return None


@dataclass(frozen=True, slots=True)
class MoneyStoredData(ExtraStoredData):
    """A money total across restarts, with what it counted of each connection (Wh) and its day."""

    total: str
    counted: dict[str, int]
    day: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _MoneyTotalSensor(EnergyKartEntity, RestoreEntity, SensorEntity):
    """A total in Home Assistant's currency that the autopilot's fees lower, kept across restarts."""

    _attr_device_class = SensorDeviceClass.MONETARY
    _attr_state_class = SensorStateClass.TOTAL
    _attr_suggested_display_precision = 2
    _today = False  # the total restarts at local midnight

    def __init__(self, coordinator: EnergyKartCoordinator, key: str) -> None:
        super().__init__(coordinator, key)
        self._attr_native_unit_of_measurement = coordinator.hass.config.currency
        self._total = Decimal(0)
        self._counted: dict[str, int] = {}
        self._day = dt_util.now().date()
        if self._today:
            self._attr_last_reset = dt_util.start_of_local_day()

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        stored = await self.async_get_last_extra_data()
        if stored is not None:
            data = stored.as_dict()
            if not self._today or data["day"] == self._day.isoformat():
                self._total = Decimal(data["total"])
            self._counted = {key: int(wh) for key, wh in data["counted"].items()}
        entry_id = self.coordinator.config_entry.entry_id
        self.async_on_remove(async_dispatcher_connect(self.hass, SIGNAL_FEE_PAID.format(entry_id), self._fee_paid))
        self._count()

    @property
    def extra_restore_state_data(self) -> MoneyStoredData:
        return MoneyStoredData(str(self._total), dict(self._counted), self._day.isoformat())

    def _next_day(self) -> None:
        now = dt_util.now()
        if self._today and now.date() != self._day:
            self._total = Decimal(0)
            self._attr_last_reset = dt_util.start_of_local_day(now)
        self._day = now.date()

    @callback
    def _fee_paid(self, fee: Decimal) -> None:
        self._next_day()
        self._total -= fee
        self.async_write_ha_state()

    @callback
    def _handle_coordinator_update(self) -> None:
        self._count()
        super()._handle_coordinator_update()

    def _count(self) -> None:
        """Count what the connections delivered since the last update."""
        self._next_day()

    @property
    def native_value(self) -> Decimal:
        return self._total


class SavingsSensor(_MoneyTotalSensor):
    """What trading saved against the grid: energy bought at retail - its price, energy sold at its
    price - feed-in (both at the tariffs of the update that saw it delivered), less the autopilot's fees."""

    def __init__(self, coordinator: EnergyKartCoordinator, *, today: bool = False) -> None:
        self._today = today
        key = "savings_today" if today else "savings_total"
        self._attr_translation_key = key
        super().__init__(coordinator, key)

    def _count(self) -> None:
        super()._count()
        coordinator = self.coordinator
        money = read_money(self.hass, coordinator.config_entry.options, coordinator.currency)
        if money.retail is None or money.feed_in is None or money.per_unit is None:
            return  # counted at the next update that knows the prices
        counted: dict[str, int] = {}
        for connection_id, connection in coordinator.data.connections.items():
            key = str(connection_id)
            counted[key] = connection.delivered_wh
            kwh = Decimal(connection.delivered_wh - self._counted.get(key, 0)) / 1000
            price = money.to_money(connection.price)
            assert price is not None
            if connection.buyer == coordinator.account:
                self._total += (money.retail - price) * kwh
            else:
                self._total += (price - money.feed_in) * kwh
        self._counted = counted


class FeesPaidSensor(_MoneyTotalSensor):
    """The gas the autopilot's transactions paid, in Home Assistant's currency."""

    _attr_translation_key = "fees_paid"

    def __init__(self, coordinator: EnergyKartCoordinator) -> None:
        super().__init__(coordinator, "fees_paid")

    @callback
    def _fee_paid(self, fee: Decimal) -> None:
        self._total += fee
        self.async_write_ha_state()
