"""The simulated homes and their day: solar under passing clouds, household load, batteries.

The physics is planned for the whole day up front from the seed, because it does not depend on
the market: a home imports what its load needs beyond its solar and battery, whoever is paid for
it. The market only decides who is paid. A day of `steps` timesteps covers 24 hours of household
life; on chain each timestep lasts `STEP_SECONDS` (the contract's timestep).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from oracle.meter import HouseholdProfile, LoadProfile

STEP_SECONDS = 900  # one timestep of chain time: the contract's timestep and grace window
DAY_START_HOUR = 5.0  # the day is played from 05:00 to 05:00
SOLAR_NOON = 13.0
SOLAR_WIDTH_HOURS = 2.6
_DAY_ORIGIN = 1_700_006_400  # a UTC midnight: household load curves are read from this day

# Roles handed out in turn, so any number of homes mixes sellers and buyers.
_ROLES: tuple[tuple[str, float, int], ...] = (  # (kind, solar kWp, battery Wh)
    ("solar+battery", 6.0, 8_000),
    ("consumer", 0.0, 0),
    ("solar", 4.5, 0),
    ("consumer", 0.0, 0),
    ("solar+battery", 5.0, 6_000),
    ("consumer", 0.0, 0),
)


@dataclass(frozen=True, slots=True)
class HomeSpec:
    """What a home has; its prices come from the grid's tariff and its autopilot."""

    index: int
    kind: str
    solar_kwp: float
    battery_wh: int
    load_scale: float
    start_wh: int  # the meter's cumulative import when the day begins

    @property
    def name(self) -> str:
        return f"home-{self.index + 1}"


@dataclass(frozen=True, slots=True)
class HomeDay:
    """A home's planned day, per timestep, in Wh."""

    spec: HomeSpec
    solar_wh: tuple[int, ...]
    load_wh: tuple[int, ...]
    import_wh: tuple[int, ...]  # what the meter counts
    surplus_wh: tuple[int, ...]  # what the home can sell
    battery_wh: tuple[int, ...]  # state of charge at the end of each timestep


def step_hour(step: int, steps: int) -> float:
    """The hour of the day (0-24) at which timestep `step` begins."""
    return (DAY_START_HOUR + step * 24 / steps) % 24


def clock(step: int, steps: int) -> str:
    hour = step_hour(step, steps)
    return f"{int(hour):02d}:{round(hour % 1 * 60) % 60:02d}"


def _sunshine(hour: float) -> float:
    """Clear-sky solar output as a fraction of peak, a bell curve around solar noon."""
    if not 6.0 <= hour <= 20.0:
        return 0.0
    return math.exp(-0.5 * ((hour - SOLAR_NOON) / SOLAR_WIDTH_HOURS) ** 2)


def cloud_cover(steps: int, rng: random.Random) -> list[float]:
    """The neighbourhood's cloud cover (0 clear, 1 overcast) per timestep: a bounded random walk."""
    cover = rng.uniform(0.0, 0.4)
    out = []
    for _ in range(steps):
        cover = min(0.9, max(0.0, cover + rng.gauss(0.0, 0.18)))
        out.append(cover)
    return out


def make_specs(count: int, rng: random.Random) -> list[HomeSpec]:
    specs = []
    for index in range(count):
        kind, kwp, battery = _ROLES[index % len(_ROLES)]
        specs.append(
            HomeSpec(
                index=index,
                kind=kind,
                solar_kwp=round(kwp * rng.uniform(0.85, 1.15), 2),
                battery_wh=battery,
                load_scale=rng.uniform(0.8, 1.4),
                start_wh=_meter_start_wh(rng),
            )
        )
    return specs


def _meter_start_wh(rng: random.Random) -> int:
    """The meter's start reading, drawn after the two draws of the homes' former fixed prices
    (prices now come from the tariff and the autopilot): each seed still plays the day it always did."""
    rng.randrange(90_000, 120_000, 1_000)
    rng.randrange(160_000, 240_000, 1_000)
    return rng.randrange(1_000_000, 9_000_000)


def plan_day(spec: HomeSpec, steps: int, cover: list[float], rng: random.Random) -> HomeDay:
    """Solar, load, battery and the resulting import and surplus of one home, per timestep."""
    hours = 24 / steps
    household = HouseholdProfile(seed=rng.randrange(2**32))
    soc = spec.battery_wh * 0.3
    max_flow = 3_000 * hours  # the battery's inverter limit per timestep, Wh
    solar, load, imports, surplus, battery = [], [], [], [], []
    for step in range(steps):
        start = step_hour(step, steps)
        sun = _sunshine(start + hours / 2) * (1 - 0.75 * cover[step] * rng.uniform(0.8, 1.2))
        solar_wh = max(0.0, spec.solar_kwp * 1000 * hours * sun)
        begin = _DAY_ORIGIN + (DAY_START_HOUR + step * hours) * 3600
        load_wh = household.energy_wh(begin, begin + hours * 3600) * spec.load_scale
        net = solar_wh - load_wh
        if net >= 0:
            flow = min(net, spec.battery_wh - soc, max_flow)
            soc += flow
            export, draw = net - flow, 0.0
        else:
            flow = max(0.0, min(-net, soc - 0.1 * spec.battery_wh, max_flow))
            soc -= flow
            export, draw = 0.0, -net - flow
        if spec.battery_wh and 17.0 <= start < 22.0:
            # Evening peak: sell, a little at a time, what the battery holds beyond the night's reserve.
            sell = min(soc - 0.4 * spec.battery_wh, 0.15 * spec.battery_wh * hours, max_flow - flow)
            if sell > 0:
                soc -= sell
                export += sell
        solar.append(round(solar_wh))
        load.append(round(load_wh))
        imports.append(round(draw))
        surplus.append(round(export))
        battery.append(round(soc))
    return HomeDay(spec, tuple(solar), tuple(load), tuple(imports), tuple(surplus), tuple(battery))


def plan_homes(count: int, steps: int, seed: int) -> list[HomeDay]:
    """The day of `count` homes over `steps` timesteps, the same for the same seed."""
    rng = random.Random(seed)
    specs = make_specs(count, rng)
    cover = cloud_cover(steps, rng)
    return [plan_day(spec, steps, cover, rng) for spec in specs]


class StepProfile(LoadProfile):
    """A meter's load profile that draws exactly a planned energy per timestep.

    Timestep `i` spans chain time [origin + i * STEP_SECONDS, origin + (i + 1) * STEP_SECONDS);
    the meter simulator (speedup 1) integrates it between two readings.
    """

    def __init__(self, origin: int, energy_wh: tuple[int, ...]) -> None:
        self.origin = origin
        self.energy = energy_wh
        self.spec = "steps"

    def power_w(self, minute: int) -> float:
        step = (minute * 60 - self.origin) // STEP_SECONDS
        if not 0 <= step < len(self.energy):
            return 0.0
        return self.energy[step] * 3600 / STEP_SECONDS

    def energy_wh(self, start: float, end: float) -> float:
        total = 0.0
        for step, wh in enumerate(self.energy):
            lo = max(start, self.origin + step * STEP_SECONDS)
            hi = min(end, self.origin + (step + 1) * STEP_SECONDS)
            if hi > lo:
                total += wh * (hi - lo) / STEP_SECONDS
        return total
