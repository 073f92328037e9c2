"""How the homes trade: sellers offer their coming surplus, buyers bid for their coming need.

Offers made in timestep k are awarded at the start of timestep k + 1 and carry that timestep's
energy; a buyer closes its connection once that timestep is over (its need is met), and the
keeper releases the rest of the escrow after the grace window. Bidding is an English auction in
a few rounds: every buyer still short of energy bids on the offer it can have cheapest, which
outbids whoever led it; an outbid buyer bids again next round while the price stays within its
own limit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from energykart_demo.homes import GWEI, HomeDay, step_hour
from energykart_demo.ledger import Ledger, Offer
from oracle.chain import Status

MIN_TRADE_WH = 200  # smaller surpluses and needs are not worth a transaction
BID_ROUNDS = 4
EVENING_HOURS = (17.0, 22.0)
EVENING_PREMIUM = 1.25  # battery energy at the evening peak is dearer, and buyers pay more for it


@dataclass(frozen=True, slots=True)
class OfferPlan:
    seller: int
    energy_wh: int
    start_price: int


@dataclass(frozen=True, slots=True)
class BidPlan:
    buyer: int
    offer_id: int
    price: int
    energy_wh: int


def _evening(step: int, steps: int) -> bool:
    return EVENING_HOURS[0] <= step_hour(step, steps) < EVENING_HOURS[1]


class Traders:
    def __init__(self, days: Sequence[HomeDay], steps: int, min_bid_increment: int, seed: int) -> None:
        self.days = list(days)
        self.steps = steps
        self.min_bid_increment = min_bid_increment
        self._rng = random.Random(seed ^ 0x5EED)

    def offers(self, step: int) -> list[OfferPlan]:
        """Offers made in `step` for the surplus of the next timestep."""
        target = step + 1
        if target >= self.steps:
            return []
        premium = EVENING_PREMIUM if _evening(target, self.steps) else 1.0
        plans = []
        for day in self.days:
            energy = day.surplus_wh[target] // 10 * 10
            if energy >= MIN_TRADE_WH:
                plans.append(OfferPlan(day.spec.index, energy, int(day.spec.ask_price * premium) // GWEI * GWEI))
        return plans

    def limit(self, buyer: int, step: int) -> int:
        premium = EVENING_PREMIUM if _evening(step + 1, self.steps) else 1.0
        return int(self.days[buyer].spec.max_price * premium) // GWEI * GWEI

    def buyers(self, step: int) -> list[int]:
        """Homes short of energy in the next timestep, in this round's (random) order."""
        target = step + 1
        if target >= self.steps:
            return []
        buyers = [d.spec.index for d in self.days if d.import_wh[target] >= MIN_TRADE_WH]
        self._rng.shuffle(buyers)
        return buyers

    def bid(self, buyer: int, step: int, ledger: Ledger) -> BidPlan | None:
        """The buyer's next bid: on the offer of this timestep it can have cheapest, unless the
        offers it leads already cover its need or every price is beyond its limit."""
        open_offers = [o for o in ledger.offers.values() if o.step == step and o.status == "bidding"]
        if sum(o.energy_wh for o in open_offers if o.bidder == buyer) >= self.days[buyer].import_wh[step + 1]:
            return None
        limit = self.limit(buyer, step)
        choices = [
            (self._next_bid(o), o.id, o)
            for o in open_offers
            if o.seller != buyer and o.bidder != buyer and self._next_bid(o) <= limit
        ]
        if not choices:
            return None
        minimum, _id, offer = min(choices)
        price = min(limit, minimum + self._rng.randrange(2_000, 12_000) * GWEI)
        return BidPlan(buyer, offer.id, price, offer.energy_wh)

    def _next_bid(self, offer: Offer) -> int:
        return offer.start_price if offer.bidder is None else offer.price + self.min_bid_increment

    def to_close(self, step: int, ledger: Ledger, *, everything: bool = False) -> list[int]:
        """Connections whose timestep is over (or all, at the end of the day) that are still drawing."""
        return [
            c.id for c in ledger.connections.values() if c.status is Status.ACTIVE and (everything or c.step < step)
        ]
