"""The demo's money: tariffs, gas priced like an L2, a home's result against the grid alone."""

from __future__ import annotations

from decimal import Decimal

from energykart_demo.economics import home_result, make_economics, tariff_curves
from energykart_demo.homes import HomeDay, HomeSpec
from energykart_demo.strategy import autopilot as ap
from energykart_demo.traders import session_ends

CENT = 10**16


def a_day(imports: tuple[int, ...], surplus: tuple[int, ...]) -> HomeDay:
    spec = HomeSpec(0, "solar", 4.0, 0, 1.0, 0)
    zeros = tuple(0 for _ in imports)
    return HomeDay(spec, zeros, zeros, imports, surplus, zeros)


def test_a_home_s_result_is_its_payments_fees_and_grid_bill() -> None:
    tariff = ap.Tariff.fixed(30 * CENT, 8 * CENT)
    day = a_day(imports=(1000, 0, 500), surplus=(0, 2000, 0))
    result = home_result(
        day,
        sold_by_step=[0, 1500, 0],
        bought_by_step=[400, 0, 0],
        earned=285 * CENT,
        paid=76 * CENT,
        fees=3 * CENT,
        tariff=tariff,
    )
    # The grid alone: 1.5 kWh imported at 0.30, 2 kWh exported at 0.08.
    assert result.grid_only_cost == 45 * CENT - 16 * CENT
    # With the market: 0.6 + 0.5 kWh imported, 0.5 kWh exported.
    assert result.grid_cost == 33 * CENT - 4 * CENT
    assert result.result == 285 * CENT - 76 * CENT - 3 * CENT - 29 * CENT
    assert result.vs_grid == result.result + result.grid_only_cost
    assert (result.grid_import_wh, result.grid_export_wh, result.unbacked_wh) == (1100, 500, 0)


def test_energy_sold_beyond_the_surplus_is_bought_from_the_grid_at_retail() -> None:
    tariff = ap.Tariff.fixed(30 * CENT, 8 * CENT)
    result = home_result(a_day((0, 0), (1000, 200)), [600, 500], [0, 0], 209 * CENT, 0, 0, tariff)
    assert result.unbacked_wh == 300
    assert result.grid_export_wh == 400
    assert result.grid_cost == 9 * CENT - ap.value_of(8 * CENT, 400)


def test_the_day_ahead_tariff_is_plausible() -> None:
    retail, feed_in = tariff_curves("day-ahead", 24, Decimal("0.30"), Decimal("0.08"))
    assert all(r > f >= 0 for r, f in zip(retail, feed_in, strict=True))
    assert Decimal("0.25") < sum(retail) / 24 < Decimal("0.32")
    noon, evening = retail[13 - 5], retail[19 - 5]  # the day starts at 05:00
    assert noon < evening  # solar floods the market at noon; the evening peak is dear
    assert tariff_curves("fixed", 3, Decimal("0.30"), Decimal("0.08")) == ([Decimal("0.30")] * 3, [Decimal("0.08")] * 3)


def test_prices_in_the_currency_and_fees_at_the_l2_gas_price() -> None:
    token = make_economics("EURe", 24)
    assert token.tariff.retail_at(0) == 30 * CENT
    assert token.fee(1_000_000) == 10**6 * 10**7 * 3000  # 1M gas at 0.01 gwei, 3000 EURe per ETH: 0.03 EURe
    native = make_economics("ETH", 24, eth_price=Decimal(3000))
    assert native.tariff.retail_at(0) == 10**14  # 0.30 EUR at 3000 EUR/ETH
    assert native.fee(1_000_000) == 10**13
    assert native.to_eur(10**14) == Decimal("0.30")


def test_sessions_cover_the_solar_hours_and_the_evening_peak() -> None:
    ends = session_ends(24, (5, 9, 17, 19))  # timestep k starts at 05:00 + k hours
    assert ends[0] == ends[3] == 4  # 05:00-09:00
    assert ends[4] == ends[11] == 12  # 09:00-17:00
    assert ends[12] == ends[13] == 14  # 17:00-19:00
    assert ends[14] == ends[23] == 24  # the night, to the end of the day
    assert session_ends(6, (5, 9, 17, 19)) == [1, 3, 3, 4, 6, 6]  # 4-hour timesteps
