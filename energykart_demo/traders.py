"""How the homes trade: each runs the integration's autopilot on its own forecast and the market.

A home's forecast is its planned day (the demo's weather is known in advance): the surplus and the
import of the timesteps to come. Offers made in timestep k are awarded at the start of timestep
k + 1, so a decision in k looks at the forecast from k + 1 on.

The market trades in sessions: blocks of the day in which supply and demand keep their shape
(the morning, the solar hours, the evening peak, the night). An offer or a bid made in a timestep
covers the rest of the session its energy is delivered in (the autopilot's horizon), and a buyer
closes its connection when that session ends. Long sessions make few, large trades, so gas stays a
small share of their value; sessions that end where the sun sets keep a connection from drawing
energy after its seller has stopped exporting.

In every timestep the homes first close connections whose session is over; then sellers offer one
at a time, each offer followed by the buyers' bids (rounds in a random order, one bid per home and
round, each seeing the bids before it). A seller offers only while every open offer has a bid, so
supply follows demand and few offers go unsold.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from energykart_demo.economics import Economics
from energykart_demo.homes import DAY_START_HOUR, HomeDay
from energykart_demo.ledger import Ledger
from energykart_demo.strategy import autopilot
from oracle.chain import Status

BID_ROUNDS = 8
OFFER_ROUNDS = 6
# Sessions start at these hours: the morning, the solar hours, the evening peak (batteries sell),
# the night.
SESSION_HOURS = (5, 9, 17, 19)
Decision = autopilot.Decision
Action = autopilot.Action


@dataclass
class HomeLog:
    """One home's autopilot decisions and the fees they spent."""

    decisions: list[tuple[int, autopilot.Decision]] = field(default_factory=list)  # (timestep, decision)
    fees: int = 0


class Traders:
    def __init__(
        self,
        days: Sequence[HomeDay],
        steps: int,
        min_bid_increment: int,
        economics: Economics,
        settings: autopilot.Settings,
        seed: int,
        session_hours: Sequence[int] = SESSION_HOURS,
    ) -> None:
        self.days = list(days)
        self.steps = steps
        self.session_ends = session_ends(steps, session_hours)
        self.min_bid_increment = min_bid_increment
        self.economics = economics
        self.settings = settings
        self.logs = [HomeLog() for _ in days]
        self._rng = random.Random(seed ^ 0x5EED)

    def situation(
        self,
        home: int,
        step: int,
        ledger: Ledger,
        *,
        credit: int = 0,
        withdraw_due: bool = False,
        bidding_closes: bool = False,
    ) -> autopilot.Situation:
        day = self.days[home]
        session_end = self._delivery_end(step)
        unsold = [
            o.step + 1
            for o in ledger.offers.values()
            if o.status == "expired" and self._delivery_end(o.step) == session_end
        ]
        offers = [
            autopilot.MarketOffer(
                id=o.id,
                energy_wh=o.energy_wh,
                start_price=o.start_price,
                price=o.price if o.bidder is not None else 0,
                min_next_bid=o.start_price if o.bidder is None else o.price + self.min_bid_increment,
                mine=o.seller == home,
                leading=o.bidder == home,
            )
            for o in ledger.offers.values()
            if o.status == "bidding"
        ]
        connections = [
            autopilot.MarketConnection(
                id=c.id,
                buying=c.buyer == home,
                price=c.price,
                cap_wh=c.cap_wh,
                delivered_wh=c.delivered_wh,
                age_steps=step - c.step,
                bought_for_steps=self.session_ends[min(c.step, self.steps - 1)] - c.step,
            )
            for c in ledger.connections.values()
            if c.status is Status.ACTIVE and home in (c.buyer, c.seller)
        ]
        paid = sum(c.paid_wei for c in ledger.connections.values() if c.buyer == home)
        # The day's physics already holds the batteries' evening sales (homes.plan_day keeps 40 %
        # for the night): the battery's part is in the surplus forecast, not offered again here.
        household = autopilot.Household(
            surplus_wh=day.surplus_wh[step + 1 :],
            need_wh=day.import_wh[step + 1 :],
            credit=credit,
            spent_today=paid + self.logs[home].fees,
        )
        horizon = session_end - (step + 1)
        return autopilot.Situation(
            step=step,
            tariff=self.economics.tariff,
            settings=dataclasses.replace(self.settings, horizon_steps=max(1, horizon)),
            fees=self.economics.fees,
            household=household,
            offers=offers,
            connections=connections,
            withdraw_due=withdraw_due,
            unsold_steps_ago=step - max(unsold) if unsold else None,
            bidding_closes=bidding_closes,
            unit=autopilot.Unit(self.economics.symbol),
        )

    def _delivery_end(self, step: int) -> int:
        """The end of the session that an offer or bid made in `step` delivers in."""
        return self.session_ends[step + 1] if step + 1 < self.steps else self.steps

    def decide(
        self,
        home: int,
        step: int,
        ledger: Ledger,
        *,
        credit: int = 0,
        withdraw_due: bool = False,
        bidding_closes: bool = False,
    ) -> list[Decision]:
        """The home's autopilot decisions now."""
        situation = self.situation(
            home, step, ledger, credit=credit, withdraw_due=withdraw_due, bidding_closes=bidding_closes
        )
        return autopilot.decide(situation)

    def record(self, home: int, step: int, decision: Decision) -> None:
        """A decision that was carried out (or a reason to do nothing)."""
        self.logs[home].decisions.append((step, decision))
        self.logs[home].fees += decision.fee if decision.action is not Action.NOTHING else 0

    def bidding_order(self) -> list[int]:
        """The homes in this round's (random) order."""
        homes = list(range(len(self.days)))
        self._rng.shuffle(homes)
        return homes


def session_ends(steps: int, session_hours: Sequence[int]) -> list[int]:
    """For each timestep, the first timestep after its session (the day's last session ends with
    the day). A session starts with the timestep in which one of `session_hours` begins."""
    starts = sorted((hour - DAY_START_HOUR) % 24 for hour in session_hours)
    session = [sum(1 for start in starts if start <= k * 24 / steps) for k in range(steps)]
    return [next((j for j in range(k, steps) if session[j] != session[k]), steps) for k in range(steps)]
