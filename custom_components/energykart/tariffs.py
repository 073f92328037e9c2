"""The grid's tariffs and the exchange rate, in Home Assistant's currency, and the autopilot's options.

Prices come from the options: a fixed value, or a price entity (Nord Pool, Tibber, EnergyZero: a
sensor whose state is the current price in `<currency>/kWh`, also for 15-minute prices). Money
on the market is converted to Home Assistant's currency exactly: a stablecoin of that currency
(EURe for EUR, USDC for USD) one to one, ETH at the exchange-rate entity's price. Gas is paid in
ETH in either kind of market, so fees always need the exchange rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Final

from homeassistant.const import STATE_UNAVAILABLE, STATE_UNKNOWN
from homeassistant.core import HomeAssistant

from .currency import Currency

CONF_RETAIL_PRICE: Final = "retail_price"
CONF_RETAIL_PRICE_ENTITY: Final = "retail_price_entity"
CONF_FEED_IN_PRICE: Final = "feed_in_price"
CONF_FEED_IN_PRICE_ENTITY: Final = "feed_in_price_entity"
CONF_EXCHANGE_RATE_ENTITY: Final = "exchange_rate_entity"  # ETH in Home Assistant's currency
CONF_BATTERY_RESERVE: Final = "battery_reserve"  # % of the capacity never offered
CONF_BATTERY_CAPACITY: Final = "battery_capacity"  # kWh
CONF_MARGIN: Final = "margin"  # currency per kWh
CONF_DAILY_BUDGET: Final = "daily_budget"  # currency a day, for energy and fees
CONF_MAX_OFFER_ENERGY: Final = "max_offer_energy"  # kWh

# What a household in the euro area pays and gets, as docs/ECONOMICS.md's fixed tariff.
DEFAULTS: Final[Mapping[str, float]] = {
    CONF_RETAIL_PRICE: 0.30,
    CONF_FEED_IN_PRICE: 0.08,
    CONF_BATTERY_RESERVE: 30,
    CONF_MARGIN: 0.07,
    CONF_DAILY_BUDGET: 5.0,
    CONF_MAX_OFFER_ENERGY: 4.0,
}
TARIFF_OPTIONS: Final = (
    CONF_RETAIL_PRICE,
    CONF_RETAIL_PRICE_ENTITY,
    CONF_FEED_IN_PRICE,
    CONF_FEED_IN_PRICE_ENTITY,
    CONF_EXCHANGE_RATE_ENTITY,
    CONF_BATTERY_RESERVE,
    CONF_BATTERY_CAPACITY,
    CONF_MARGIN,
    CONF_DAILY_BUDGET,
    CONF_MAX_OFFER_ENERGY,
)
WEI_PER_ETH: Final = 10**18
# A price entity's unit: money per this energy unit, as a factor to per kWh.
_PER_KWH: Final = {"/kWh": Decimal(1), "/MWh": Decimal("0.001"), "/Wh": Decimal(1000)}


def number(value: Any) -> Decimal | None:
    """A finite number as written (a float by its shortest form), or None."""
    try:
        parsed = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return parsed if parsed.is_finite() else None


def option(options: Mapping[str, Any], key: str) -> Decimal:
    """A number option, or its default."""
    found = number(options.get(key, DEFAULTS.get(key, 0)))
    return Decimal(0) if found is None else found


def entity_number(hass: HomeAssistant, entity_id: str) -> tuple[Decimal | None, str | None]:
    """The state of an entity as a number and its unit; None while it has no number."""
    state = hass.states.get(entity_id)
    if state is None or state.state in (STATE_UNKNOWN, STATE_UNAVAILABLE):
        return None, None
    return number(state.state), state.attributes.get("unit_of_measurement")


def _price(hass: HomeAssistant, options: Mapping[str, Any], fixed: str, entity: str) -> Decimal | None:
    """A price per kWh: the entity's current state when one is set, else the fixed value."""
    entity_id = options.get(entity)
    if not entity_id:
        return option(options, fixed)
    value, unit = entity_number(hass, entity_id)
    if value is None:
        return None
    for suffix, factor in _PER_KWH.items():
        if unit and unit.endswith(suffix):
            return value * factor
    return value


def pegged(market: Currency, currency: str) -> bool:
    """True for a token of Home Assistant's currency: EURe or EURC for EUR, USDC or USDT for USD."""
    return not market.is_native and market.symbol.upper().startswith(currency.upper())


@dataclass(frozen=True, slots=True)
class Money:
    """The tariffs now, and how the market's money converts to Home Assistant's `currency`.

    A price or rate is None while its entity has no number (or, for the exchange rate, none is set).
    """

    currency: str
    market: Currency
    retail: Decimal | None  # currency per kWh
    feed_in: Decimal | None
    eth_price: Decimal | None  # currency per ETH

    @property
    def per_unit(self) -> Fraction | None:
        """Home Assistant's currency per smallest unit of the market's currency; None when unknown."""
        if pegged(self.market, self.currency):
            return Fraction(1, 10**self.market.decimals)
        if self.market.is_native and self.eth_price is not None:
            return Fraction(self.eth_price) / WEI_PER_ETH
        return None

    @property
    def tokens_per_eth(self) -> Decimal | None:
        """The market's currency per ETH, which prices gas; None in an ETH market (or unknown)."""
        return None if self.market.is_native else self.eth_price

    def to_money(self, units: int) -> Decimal | None:
        """Smallest units of the market's currency in Home Assistant's currency."""
        per_unit = self.per_unit
        if per_unit is None:
            return None
        exact = units * per_unit
        return Decimal(exact.numerator) / Decimal(exact.denominator)

    def gas_money(self, wei: int) -> Decimal | None:
        """Gas paid in wei, in Home Assistant's currency."""
        if self.eth_price is None:
            return None
        return Decimal(wei) * self.eth_price / WEI_PER_ETH


def read_money(hass: HomeAssistant, options: Mapping[str, Any], market: Currency) -> Money:
    """The tariffs and the exchange rate as their options and entities give them now."""
    rate_entity = options.get(CONF_EXCHANGE_RATE_ENTITY)
    eth_price = entity_number(hass, rate_entity)[0] if rate_entity else None
    return Money(
        currency=hass.config.currency,
        market=market,
        retail=_price(hass, options, CONF_RETAIL_PRICE, CONF_RETAIL_PRICE_ENTITY),
        feed_in=_price(hass, options, CONF_FEED_IN_PRICE, CONF_FEED_IN_PRICE_ENTITY),
        eth_price=eth_price if eth_price is not None and eth_price > 0 else None,
    )
