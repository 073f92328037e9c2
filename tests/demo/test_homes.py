"""The simulated homes: a reproducible day with sun at noon, batteries and evening demand."""

from __future__ import annotations

from energykart_demo.homes import STEP_SECONDS, StepProfile, plan_homes, step_hour


def test_the_same_seed_plays_the_same_day() -> None:
    assert plan_homes(6, 24, seed=7) == plan_homes(6, 24, seed=7)
    assert plan_homes(6, 24, seed=7) != plan_homes(6, 24, seed=8)


def test_solar_homes_sell_at_noon_and_consumers_only_buy() -> None:
    days = plan_homes(6, 24, seed=1)
    noon = next(k for k in range(24) if step_hour(k, 24) == 12)
    night = next(k for k in range(24) if step_hour(k, 24) == 2)
    for day in days:
        if day.spec.solar_kwp:
            assert day.surplus_wh[noon] > 0
            assert day.import_wh[noon] == 0
        else:
            assert not any(day.surplus_wh)
        assert day.solar_wh[night] == 0
        assert all(not (imported and surplus) for imported, surplus in zip(day.import_wh, day.surplus_wh, strict=True))


def test_batteries_stay_within_their_capacity() -> None:
    for day in plan_homes(6, 24, seed=3):
        assert all(0 <= soc <= day.spec.battery_wh for soc in day.battery_wh)


def test_the_meter_profile_draws_each_timestep_s_planned_energy() -> None:
    profile = StepProfile(origin=1_000_000, energy_wh=(100, 250, 0, 400))
    for step, wh in enumerate(profile.energy):
        start = profile.origin + step * STEP_SECONDS
        assert profile.energy_wh(start, start + STEP_SECONDS) == wh
    assert profile.energy_wh(profile.origin + 4 * STEP_SECONDS, profile.origin + 9 * STEP_SECONDS) == 0
