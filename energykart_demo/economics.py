"""The money side of the day: the grid's tariff, gas priced like an L2, and each home's result.

Every amount is an integer in the market currency's smallest unit (10^-18 EURe, or wei), exactly as
the contract and the autopilot count. A home's result for the day is what it earned on the market,
less what it paid there, its fees, and its grid bill for the energy it still imported or exported;
its grid-only result is the grid bill alone, for all its import and export. The grid bill of a
timestep is priced like the contract prices energy: price per kWh x Wh / 1000, rounded down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from energykart_demo.homes import HomeDay, step_hour
from energykart_demo.strategy import autopilot

DECIMALS = 18  # the DemoToken's and the native coin's
ETH = 10**18
GWEI = 10**9
FIXED_RETAIL = Decimal("0.30")
FIXED_FEED_IN = Decimal("0.08")
DEFAULT_GAS_PRICE_GWEI = Decimal("0.01")  # an L2's execution gas price: Arbitrum One's base-fee floor
DEFAULT_ETH_PRICE = Decimal(3000)  # EUR per ETH, fixed for the day
# A plausible day-ahead (spot) price per hour of a sunny spring day, EUR per kWh: a morning and an
# evening peak, and a midday dip when solar floods the market.
_SPOT_BY_HOUR = (  # 00:00 to 23:00
    ("0.090", "0.085", "0.080", "0.078", "0.080", "0.090", "0.110", "0.135", "0.125", "0.090", "0.060", "0.040"),
    ("0.028", "0.025", "0.035", "0.060", "0.090", "0.130", "0.170", "0.185", "0.150", "0.120", "0.110", "0.100"),
)
DAY_AHEAD_SPOT: tuple[Decimal, ...] = tuple(Decimal(p) for half in _SPOT_BY_HOUR for p in half)
DAY_AHEAD_RETAIL_ADDER = Decimal("0.20")  # grid fees, levies, taxes and the supplier's margin
DAY_AHEAD_FEED_IN_FEE = Decimal("0.01")  # a dynamic feed-in tariff pays the spot price less a fee


@dataclass(frozen=True, slots=True)
class Economics:
    """Tariffs in EUR per kWh per timestep, their prices in the market currency, and gas."""

    symbol: str  # the market currency: EURe (1 EURe = 1 EUR) or ETH
    tariff_name: str
    retail_eur: tuple[Decimal, ...]
    feed_in_eur: tuple[Decimal, ...]
    gas_price_wei: int
    eth_price: Decimal  # EUR per ETH
    tariff: autopilot.Tariff  # currency units per kWh
    fees: autopilot.Fees

    @property
    def native(self) -> bool:
        return self.symbol == "ETH"

    def to_units(self, eur: Decimal) -> int:
        return eur_to_units(eur, native=self.native, eth_price=self.eth_price)

    def to_eur(self, units: int) -> Decimal:
        """Currency units in EUR (EURe is EUR; ETH at the day's rate)."""
        amount = Decimal(units) / ETH
        return amount * self.eth_price if self.native else amount

    def fee(self, gas: int) -> int:
        """The fee of `gas`, in currency units (rounded up): the autopilot's own reckoning."""
        return self.fees.cost(gas)


def eur_to_units(eur: Decimal, *, native: bool, eth_price: Decimal) -> int:
    """EUR in the market currency's smallest unit: EURe exactly, ETH at the day's rate (rounded down)."""
    if native:
        return int(eur * ETH / eth_price)
    return autopilot.to_units(eur, DECIMALS)


def tariff_curves(name: str, steps: int, retail: Decimal, feed_in: Decimal) -> tuple[list[Decimal], list[Decimal]]:
    """Retail and feed-in prices per timestep, EUR per kWh: fixed, or from the day-ahead curve."""
    if name == "fixed":
        return [retail] * steps, [feed_in] * steps
    spot = [DAY_AHEAD_SPOT[int(step_hour(k, steps))] for k in range(steps)]
    return [p + DAY_AHEAD_RETAIL_ADDER for p in spot], [max(Decimal(0), p - DAY_AHEAD_FEED_IN_FEE) for p in spot]


def make_economics(
    symbol: str,
    steps: int,
    tariff_name: str = "fixed",
    gas_price_gwei: Decimal = DEFAULT_GAS_PRICE_GWEI,
    eth_price: Decimal = DEFAULT_ETH_PRICE,
    retail: Decimal = FIXED_RETAIL,
    feed_in: Decimal = FIXED_FEED_IN,
    *,
    permits: bool = True,
) -> Economics:
    """The day's money; `permits`: a token market's bids carry EIP-2612 permits (else they approve)."""
    retail_eur, feed_in_eur = tariff_curves(tariff_name, steps, retail, feed_in)
    gas_price_wei = int(gas_price_gwei * GWEI)
    native = symbol == "ETH"
    gas = autopilot.NATIVE_GAS if native else autopilot.ERC20_PERMIT_GAS if permits else autopilot.ERC20_GAS
    fees = autopilot.Fees.for_currency(gas, gas_price_wei, None if native else eth_price, DECIMALS)
    tariff = autopilot.Tariff(
        tuple(eur_to_units(p, native=native, eth_price=eth_price) for p in retail_eur),
        tuple(eur_to_units(p, native=native, eth_price=eth_price) for p in feed_in_eur),
    )
    return Economics(symbol, tariff_name, tuple(retail_eur), tuple(feed_in_eur), gas_price_wei, eth_price, tariff, fees)


@dataclass(frozen=True, slots=True)
class HomeResult:
    """A home's day in currency units (and Wh): on the market and with the grid."""

    sold_wh: int
    bought_wh: int
    grid_import_wh: int
    grid_export_wh: int
    unbacked_wh: int  # sold beyond its own surplus in a timestep: bought from the grid at retail
    earned: int
    paid: int
    fees: int
    grid_cost: int  # retail for the grid import (and any unbacked sale), less feed-in for the export
    grid_only_cost: int

    @property
    def result(self) -> int:
        return self.earned - self.paid - self.fees - self.grid_cost

    @property
    def grid_only_result(self) -> int:
        return -self.grid_only_cost

    @property
    def vs_grid(self) -> int:
        return self.result - self.grid_only_result


def home_result(
    day: HomeDay,
    sold_by_step: Sequence[int],
    bought_by_step: Sequence[int],
    earned: int,
    paid: int,
    fees: int,
    tariff: autopilot.Tariff,
) -> HomeResult:
    """Price a home's timesteps: what the market did not supply comes from the grid at retail, what
    it did not take goes to the grid at feed-in."""
    grid_cost = grid_only = 0
    imported = exported = unbacked = 0
    for k, (need, surplus) in enumerate(zip(day.import_wh, day.surplus_wh, strict=True)):
        retail, feed_in = tariff.retail_at(k), tariff.feed_in_at(k)
        grid_only += autopilot.value_of(retail, need) - autopilot.value_of(feed_in, surplus)
        grid_import = need - bought_by_step[k]
        grid_export = surplus - sold_by_step[k]
        short = max(0, -grid_export)
        grid_cost += (
            autopilot.value_of(retail, grid_import)
            + autopilot.value_of(retail, short)
            - autopilot.value_of(feed_in, max(0, grid_export))
        )
        imported += grid_import
        exported += max(0, grid_export)
        unbacked += short
    return HomeResult(
        sold_wh=sum(sold_by_step),
        bought_wh=sum(bought_by_step),
        grid_import_wh=imported,
        grid_export_wh=exported,
        unbacked_wh=unbacked,
        earned=earned,
        paid=paid,
        fees=fees,
        grid_cost=grid_cost,
        grid_only_cost=grid_only,
    )


def share(part: int, whole: int) -> Fraction:
    return Fraction(part, whole) if whole else Fraction(0)
