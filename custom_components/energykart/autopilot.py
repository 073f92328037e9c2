"""The autopilot: one household's trading decisions, from tariffs, forecasts, the market and gas.

Pure Python (standard library only, no Home Assistant): the integration's "Autopilot" switch and
`make demo` run this very module. Money is exact: prices are integers in the market currency's
smallest unit per kWh (wei per kWh for ETH, 10^-18 EURe per kWh for an 18-decimal stablecoin),
amounts are integers in that unit, energy is integer Wh. A fee is gas x gas price (wei), converted
to the currency at an exact rate and rounded up, so the autopilot never underestimates a cost.
The reasons write amounts in the currency (`Unit`: "0.1900 EURe/kWh"), the decisions keep the
integers.

Gas is part of every decision: a trade is made only when its gain against the grid covers its
fees and the fees stay within `max_fee_share` of its value, which sets the smallest trade worth
making. The rules, each decision carrying its reason:

- offer: the run of surplus forecast from the next timestep on within the horizon (plus battery
  energy above the reserve), less what is offered and what its buyers will likely still draw (at
  the pace they drew so far), up to `max_offer_wh`, at a start price of the feed-in tariff +
  margin. Only while every open offer has a bid (demand is left) and no offer of the horizon's
  energy has gone unsold, so an offer's fee is rarely wasted.
- bid: the need forecast over the horizon, less what connections and leading bids already cover.
  An offer nobody bid on (the smallest that covers the need, else the largest), at the price
  halfway between its start price and the limit (retail - margin): seller and buyer share the
  gain. An offer others lead only by a household with nothing for the horizon yet, when no unbid
  offer is left and bidding is about to close, at once at the limit (each further bid costs a
  bid's gas, so the autopilot never creeps up in small increments), and only when its own saving
  is worth the fee. A bid on an offer larger than the need (its rest unused, a close to pay) is
  made only when the whole trade's fees, the seller's offer with it, stay within the share of the
  energy drawn: a much smaller need leaves the offer to a neighbour whose need fits it. Never
  beyond the daily budget.
- close: a bought connection once the timesteps it was bought for are over (the need is met), or
  as soon as retail - margin falls below its price.
- longer: an offer or a bid that is too small for its fees over the horizon looks further ahead,
  one timestep at a time up to `longest_horizon_steps`, and is made for the first horizon at
  which it is worth them (the connection it opens ends with that horizon): a household that
  exports or imports little trades less often and for longer, instead of not at all.
- withdraw: credit, at most once a day, when the withdrawal's fee is at most a quarter of
  `max_fee_share` of it; a smaller credit stays in the market (it is still the household's) and
  waits for a day when it has grown enough.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

WEI_PER_ETH = 10**18
WH_PER_KWH = 1000
# A withdrawal is worth its fee when the fee is at most max_fee_share / this of the credit.
_WITHDRAWAL_SHARE_DIVISOR = 4


class Action(StrEnum):
    OFFER = "offer"
    BID = "bid"
    CLOSE = "close"
    WITHDRAW = "withdraw"
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class GasCosts:
    """Gas of each transaction a household sends (bench/gas.py; the bid is the dearer first bid)."""

    create_offer: int
    bid: int
    approve: int  # a token market's approval of the bid's escrow; 0 in a native market
    close: int
    withdraw: int


NATIVE_GAS = GasCosts(create_offer=87_350, bid=66_036, approve=0, close=41_480, withdraw=35_596)
ERC20_GAS = GasCosts(create_offer=87_350, bid=84_521, approve=45_968, close=41_480, withdraw=44_084)
# A token with EIP-2612 permits: the bid carries its permit (about 26,000 gas more) instead of an
# approve transaction.
ERC20_PERMIT_GAS = GasCosts(create_offer=87_350, bid=110_600, approve=0, close=41_480, withdraw=44_084)


@dataclass(frozen=True, slots=True)
class Fees:
    """What gas costs in the market's currency: gas x `gas_price_wei`, times `units_per_wei`."""

    gas: GasCosts
    gas_price_wei: int
    units_per_wei: Fraction = Fraction(1)  # 1 in an ETH market; an ERC-20 market: its exchange rate

    @classmethod
    def for_currency(
        cls, gas: GasCosts, gas_price_wei: int, currency_per_eth: Decimal | None, decimals: int = 18
    ) -> Fees:
        """Fees in an ETH market (`currency_per_eth` None) or in a token of `decimals` worth
        `currency_per_eth` tokens per ETH."""
        if currency_per_eth is None:
            return cls(gas, gas_price_wei)
        return cls(gas, gas_price_wei, Fraction(currency_per_eth) * 10**decimals / WEI_PER_ETH)

    def cost(self, gas: int) -> int:
        """The fee of `gas`, in currency units, rounded up."""
        exact = gas * self.gas_price_wei * self.units_per_wei
        return -(-exact.numerator // exact.denominator)


@dataclass(frozen=True, slots=True)
class Tariff:
    """The grid's prices per timestep, currency units per kWh: retail (import) and feed-in (export).

    A fixed tariff is a curve of one value; a day-ahead tariff has one value per timestep. Steps past
    the end of the curve repeat its last value."""

    retail: tuple[int, ...]
    feed_in: tuple[int, ...]

    @classmethod
    def fixed(cls, retail: int, feed_in: int) -> Tariff:
        return cls((retail,), (feed_in,))

    def retail_at(self, step: int) -> int:
        return self.retail[min(step, len(self.retail) - 1)]

    def feed_in_at(self, step: int) -> int:
        return self.feed_in[min(step, len(self.feed_in) - 1)]


def to_units(amount: Decimal | str, decimals: int = 18) -> int:
    """A currency amount (for example Decimal("0.30")) in the currency's smallest unit."""
    scaled = Decimal(amount).scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than {decimals} decimals")
    return int(scaled)


def value_of(price_per_kwh: int, energy_wh: int) -> int:
    """What `energy_wh` costs at `price_per_kwh`, as the contract pays it (rounded down)."""
    return price_per_kwh * energy_wh // WH_PER_KWH


@dataclass(frozen=True, slots=True)
class Unit:
    """How the reasons write amounts of the market's currency: `symbol`, with `decimals` decimals in
    its smallest unit. The decisions themselves keep the exact integers."""

    symbol: str = "EURe"
    decimals: int = 18

    def money(self, units: int) -> str:
        """An amount, to four decimals, or to two significant digits when it is smaller than 0.01
        (a fee of 0.0026 EURe, a price of 0.000063 ETH/kWh): 1234500000000000 -> "0.0012 EURe"."""
        value = Decimal(units).scaleb(-self.decimals)
        places = 4
        if value and abs(value) < Decimal("0.01"):
            places = max(places, 1 - abs(value).adjusted())
        return f"{value:.{places}f} {self.symbol}"

    def price(self, units_per_kwh: int) -> str:
        return f"{self.money(units_per_kwh)}/kWh"


@dataclass(frozen=True, slots=True)
class Settings:
    """The household's choices (the integration's options)."""

    margin: int  # currency units per kWh: offers start at feed-in + margin, bids stop at retail - margin
    daily_budget: int  # currency units a day for energy and fees
    max_offer_wh: int
    reserve_pct: int = 30  # battery energy below this share of the capacity is never offered
    horizon_steps: int = 4  # timesteps ahead that an offer and a bid cover
    # When a trade over `horizon_steps` is too small for its fees, the autopilot may look further
    # ahead, one timestep at a time up to this many, for a trade that is worth them (None: never).
    longest_horizon_steps: int | None = None
    min_export_wh: int = 100  # forecast exports below this per timestep are not worth counting
    max_fee_share: Fraction = Fraction(1, 50)  # one side's fees at most this share of a trade's value


@dataclass(frozen=True, slots=True)
class Household:
    """The household now: forecasts per timestep, starting with the next timestep, in Wh."""

    surplus_wh: Sequence[int]  # export the household expects (solar beyond load and charging)
    need_wh: Sequence[int]  # import it expects
    battery_wh: int = 0  # state of charge
    battery_capacity_wh: int = 0
    credit: int = 0  # withdrawable, currency units
    spent_today: int = 0  # paid for energy and fees today, currency units


@dataclass(frozen=True, slots=True)
class MarketOffer:
    """An offer open for bids, as the household sees it."""

    id: int
    energy_wh: int
    start_price: int
    price: int  # the highest bid, 0 without one
    min_next_bid: int
    mine: bool  # the household is its seller
    leading: bool  # the household's bid leads it

    @property
    def has_bid(self) -> bool:
        return self.price > 0


@dataclass(frozen=True, slots=True)
class MarketConnection:
    """A connection of the household that is still delivering."""

    id: int
    buying: bool  # the household is the buyer (else the seller)
    price: int
    cap_wh: int
    delivered_wh: int
    age_steps: int  # timesteps since its award
    bought_for_steps: int = 0  # the timesteps its energy was bought for (0: the settings' horizon)

    @property
    def remaining_wh(self) -> int:
        return max(0, self.cap_wh - self.delivered_wh)

    def remaining_in_horizon_wh(self, horizon_steps: int) -> int:
        """What it may still deliver after this timestep: nothing once its own timesteps end with it."""
        bought_for = self.bought_for_steps or horizon_steps
        return self.remaining_wh if bought_for - self.age_steps >= 2 else 0

    def expected_draw_wh(self, horizon_steps: int) -> int:
        """What its buyer will likely draw after this timestep: at the pace it drew so far, with a
        quarter to spare, never more than what is left of it. A seller offers the rest of its
        surplus to others instead of holding it for a buyer who cannot use it."""
        left = (self.bought_for_steps or horizon_steps) - self.age_steps - 1
        if left <= 0:
            return 0
        if self.age_steps == 0:
            return self.remaining_wh
        pace = -(-self.delivered_wh // self.age_steps)
        return min(self.remaining_wh, pace * left * 5 // 4)


@dataclass(frozen=True, slots=True)
class Situation:
    """Everything one decision round looks at. `step` indexes the tariff: the timestep now."""

    step: int
    tariff: Tariff
    settings: Settings
    fees: Fees
    household: Household
    offers: Sequence[MarketOffer] = ()
    connections: Sequence[MarketConnection] = ()
    withdraw_due: bool = False  # the daily withdrawal time has come
    unsold_steps_ago: int | None = None  # since an offer of this horizon's energy found no buyer (anyone's)
    bidding_closes: bool = False  # the open offers' bidding ends soon: no more offers come before it
    unit: Unit = Unit()  # how the reasons write amounts


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    offer_id: int | None = None  # bid: the offer
    connection_id: int | None = None  # close: the connection
    energy_wh: int = 0  # offer: its energy; bid: the offer's energy
    price: int = 0  # offer: start price; bid: price per kWh
    fee: int = 0  # the fees this decision spends, currency units
    gain: int = 0  # the expected gain against the grid before fees, currency units
    cost: int = 0  # bid: what it may spend today, the energy it uses and its fees
    horizon_steps: int = 0  # offer, bid: the timesteps it covers (a connection it opens ends with them)


def decide(situation: Situation) -> list[Decision]:
    """The household's decisions now: closes first, then offers, bids and the withdrawal.

    Returns at least one decision; NOTHING carries the reason nothing else was done."""
    decisions = [*_closes(situation), *_offers(situation), *_bids(situation), *_withdrawal(situation)]
    acted = [d for d in decisions if d.action is not Action.NOTHING]
    if acted:
        return acted
    return decisions or [Decision(Action.NOTHING, "no surplus to offer, no need to buy, no credit to withdraw")]


# ---------------------------------------------------------------------- close


def _closes(s: Situation) -> list[Decision]:
    out = []
    limit = s.tariff.retail_at(s.step + 1) - s.settings.margin
    for conn in s.connections:
        if not conn.buying or conn.remaining_wh == 0:
            continue
        if conn.price > limit:
            out.append(
                Decision(
                    Action.CLOSE,
                    f"connection #{conn.id} costs {s.unit.price(conn.price)}, more than retail - margin "
                    f"({s.unit.price(limit)}) now",
                    connection_id=conn.id,
                    fee=s.fees.cost(s.fees.gas.close),
                )
            )
        elif conn.age_steps >= (conn.bought_for_steps or s.settings.horizon_steps):
            out.append(
                Decision(
                    Action.CLOSE,
                    f"connection #{conn.id}: the timesteps it was bought for are over, the need is met "
                    f"({conn.delivered_wh} of {conn.cap_wh} Wh drawn)",
                    connection_id=conn.id,
                    fee=s.fees.cost(s.fees.gas.close),
                )
            )
    return out


# ---------------------------------------------------------------------- offer


def _horizon(s: Situation) -> range:
    return range(s.step + 1, s.step + 1 + s.settings.horizon_steps)


def sellable_wh(s: Situation) -> int:
    """The surplus worth offering now: the run of exports from the next timestep on, within the
    horizon (a buyer draws from the award on, so a surplus that starts later waits for its own
    offer), plus battery energy above the reserve."""
    h = s.household
    exports = 0
    for wh in h.surplus_wh[: s.settings.horizon_steps]:
        if wh < s.settings.min_export_wh:
            break
        exports += wh
    reserve = h.battery_capacity_wh * s.settings.reserve_pct // 100
    return exports + max(0, h.battery_wh - reserve)


def _offers(s: Situation) -> list[Decision]:
    """At most one offer per round: the next waits to see whether this one finds a buyer."""
    return _looking_further(s, _offers_over, len(s.household.surplus_wh))


def _looking_further(
    s: Situation, over: Callable[[Situation], tuple[list[Decision], bool]], forecast_steps: int
) -> list[Decision]:
    """The decisions of `over` at the settings' horizon; when they make no trade only because it
    would be too small for its fees, those of the first longer horizon (up to the longest, and as
    far as the forecast of `forecast_steps` reaches) that makes one; without one, the reason at the
    furthest horizon looked at. Gas sets the timing: a household that imports or
    exports little trades less often, for longer."""
    decisions, too_small = over(s)
    horizon = s.settings.horizon_steps
    longest = min(s.settings.longest_horizon_steps or horizon, forecast_steps)
    while too_small and horizon < longest:
        horizon += 1
        decisions, too_small = over(
            dataclasses.replace(s, settings=dataclasses.replace(s.settings, horizon_steps=horizon))
        )
        if any(d.action is not Action.NOTHING for d in decisions):
            break
    return decisions  # without a trade: the reason of the furthest horizon it looked at


def _offers_over(s: Situation) -> tuple[list[Decision], bool]:
    """The offer over the settings' horizon, and whether the only reason against it is its size."""
    sold = sum(c.expected_draw_wh(s.settings.horizon_steps) for c in s.connections if not c.buying)
    free = sellable_wh(s) - sold - sum(o.energy_wh for o in s.offers if o.mine)
    if free <= 0:
        return [], False
    waiting = [o.id for o in s.offers if not o.has_bid]
    if waiting:
        return [
            Decision(
                Action.NOTHING,
                f"{free} Wh to sell, but offer #{waiting[0]} still waits for a bid: the market has no buyer "
                "for more yet, and an offer nobody bids on wastes its fee",
            )
        ], False
    if s.unsold_steps_ago is not None:
        return [
            Decision(
                Action.NOTHING,
                f"{free} Wh to sell, but an offer of this horizon's energy found no buyer {s.unsold_steps_ago} "
                "timesteps ago: no further offer's fee for it",
            )
        ], False
    feed_in = max(s.tariff.feed_in_at(k) for k in _horizon(s))
    price = feed_in + s.settings.margin
    fee = s.fees.cost(s.fees.gas.create_offer)
    energy = min(free, s.settings.max_offer_wh) // 10 * 10
    value = value_of(price, energy)
    gain = value - value_of(feed_in, energy)
    if gain < fee or not _within_share(fee, value, s.settings.max_fee_share):
        return [
            Decision(
                Action.NOTHING,
                f"{energy} Wh at {s.unit.price(price)} is worth {s.unit.money(value)}: its gain over feed-in "
                f"({s.unit.money(gain)}) does not cover the offer's fee ({s.unit.money(fee)}) within "
                f"{_percent(s.settings.max_fee_share)} of its value",
                energy_wh=energy,
                price=price,
                fee=fee,
                gain=gain,
            )
        ], energy < s.settings.max_offer_wh // 10 * 10
    return [
        Decision(
            Action.OFFER,
            f"{energy} Wh of surplus over the next {s.settings.horizon_steps} timesteps from {s.unit.price(price)} "
            f"(feed-in {s.unit.price(feed_in)} + margin): gains {s.unit.money(gain)} over feed-in for a fee of "
            f"{s.unit.money(fee)}",
            energy_wh=energy,
            price=price,
            fee=fee,
            gain=gain,
            horizon_steps=s.settings.horizon_steps,
        )
    ], False


def _within_share(fee: int, value: int, share: Fraction) -> bool:
    return fee * share.denominator <= value * share.numerator


def _percent(share: Fraction) -> str:
    return f"{float(share) * 100:g} %"


# ---------------------------------------------------------------------- bid


def _bids(s: Situation) -> list[Decision]:
    return _looking_further(s, _bids_over, len(s.household.need_wh))


def _bids_over(s: Situation) -> tuple[list[Decision], bool]:
    """The bids for the need over the settings' horizon, and whether none is made only because the
    offers' fees are too much for so small a need."""
    h = s.household
    need = sum(h.need_wh[: s.settings.horizon_steps])
    covered = sum(c.remaining_in_horizon_wh(s.settings.horizon_steps) for c in s.connections if c.buying) + sum(
        o.energy_wh for o in s.offers if o.leading
    )
    uncovered = need - covered
    if uncovered <= 0:
        return [], False
    retail = min(s.tariff.retail_at(k) for k in _horizon(s))
    limit = retail - s.settings.margin
    spent = h.spent_today
    out: list[Decision] = []
    taken: set[int] = set()
    while uncovered > 0:
        hungry = covered <= 0 and not taken and s.bidding_closes
        choice, refusal, too_small = _best_bid(s, uncovered, retail, limit, spent, taken, hungry=hungry)
        if choice is None:
            out.append(Decision(Action.NOTHING, refusal))
            return out, too_small and not taken
        out.append(choice)
        assert choice.offer_id is not None
        taken.add(choice.offer_id)
        uncovered -= choice.energy_wh
        spent += choice.cost
    return out, False


def _best_bid(
    s: Situation, uncovered: int, retail: int, limit: int, spent: int, taken: set[int], *, hungry: bool
) -> tuple[Decision | None, str, bool]:
    """The best bid on one offer, or None, why there is none, and whether only the fees' share of
    so small a need stood against every offer.

    Offers nobody bid on come first, at their start price: the smallest that covers the whole need
    (one connection, one set of fees), else the largest. Only a household with nothing bought for
    the horizon yet (`hungry`) outbids, at once at its limit, only when every offer has a bid and
    only as bidding closes, when no further offer can come: outbidding a neighbour who then outbids
    another costs each of them a bid's fee."""
    candidates = [o for o in s.offers if not o.mine and not o.leading and o.id not in taken]
    if not candidates:
        return None, f"needs {uncovered} Wh more, but no offer is open to bid on", False
    contested = not any(not o.has_bid for o in candidates)
    if contested and not hungry:
        return (
            None,
            f"needs {uncovered} Wh more, but every offer has a bid and it already has energy for the horizon",
            False,
        )
    pool = [o for o in candidates if o.has_bid == contested]
    covering = sorted((o for o in pool if o.energy_wh >= uncovered), key=lambda o: (o.energy_wh, o.id))
    partial = sorted((o for o in pool if o.energy_wh < uncovered), key=lambda o: (-o.energy_wh, o.id))
    reasons: list[str] = []
    too_small = False
    for offer in [*covering, *partial]:
        decision, why, small = _bid_on(s, offer, uncovered, retail, limit, spent, contested=contested)
        if decision is not None:
            return decision, "", False
        reasons.append(why)
        too_small |= small
    return None, f"needs {uncovered} Wh more, but no bid pays off: " + "; ".join(reasons[:3]), too_small


def _bid_on(
    s: Situation, offer: MarketOffer, uncovered: int, retail: int, limit: int, spent: int, *, contested: bool
) -> tuple[Decision | None, str, bool]:
    """A bid on `offer`, or None, why not, and whether a larger need would make it worth its fees."""
    price = limit if contested else max(offer.min_next_bid, (offer.start_price + limit) // 2)
    if price < offer.min_next_bid or price > limit:
        return (
            None,
            f"#{offer.id} needs {s.unit.price(offer.min_next_bid)}, above retail - margin ({s.unit.price(limit)})",
            False,
        )
    used = min(offer.energy_wh, uncovered)
    gas = s.fees.gas.approve + s.fees.gas.bid + (s.fees.gas.close if offer.energy_wh > uncovered else 0)
    fee = s.fees.cost(gas)
    value = value_of(price, used)
    gain = value_of(retail, used) - value
    if contested:
        # An outbid takes energy a neighbour already bid for, whose bid fee is then lost: it must be
        # worth it by its own saving, not only by the energy's value.
        basis, trade_fee, what = gain, fee, "its fees"
    elif offer.energy_wh > uncovered:
        # An offer larger than the need leaves part of the seller's energy unsold and costs a close:
        # the whole trade's fees (the seller's offer too) must stay within the share of the energy
        # drawn, so a much smaller need leaves the offer to a neighbour whose need fits it.
        basis, trade_fee, what = value, fee + s.fees.cost(s.fees.gas.create_offer), "the trade's fees"
    else:
        basis, trade_fee, what = value, fee, "its fees"
    if gain < fee or not _within_share(trade_fee, basis, s.settings.max_fee_share):
        return (
            None,
            f"#{offer.id}: {used} Wh at {s.unit.price(price)} saves {s.unit.money(gain)}, short of {what} "
            f"({s.unit.money(trade_fee)}) within "
            f"{_percent(s.settings.max_fee_share)} of its {'saving' if contested else 'value'}",
            used < offer.energy_wh,
        )
    cost = value + fee
    if spent + cost > s.settings.daily_budget:
        return (
            None,
            f"#{offer.id}: {s.unit.money(cost)} more would pass the daily budget "
            f"({s.unit.money(s.settings.daily_budget)})",
            False,
        )
    how = (
        f"outbids the leader at the limit {s.unit.price(price)}"
        if contested
        else f"at {s.unit.price(price)}, halfway from its start price to the limit: the gain is shared with the seller"
    )
    return (
        Decision(
            Action.BID,
            f"#{offer.id} ({offer.energy_wh} Wh) for {used} Wh of the next {s.settings.horizon_steps} timesteps' "
            f"need, {how}: saves {s.unit.money(gain)} against retail for a fee of {s.unit.money(fee)}",
            offer_id=offer.id,
            energy_wh=offer.energy_wh,
            price=price,
            fee=fee,
            gain=gain,
            cost=cost,
            horizon_steps=s.settings.horizon_steps,
        ),
        "",
        False,
    )


# ---------------------------------------------------------------------- withdraw


def _withdrawal(s: Situation) -> list[Decision]:
    credit = s.household.credit
    if not s.withdraw_due or credit == 0:
        return []
    fee = s.fees.cost(s.fees.gas.withdraw)
    # Credit left in the market stays the household's and adds up: a withdrawal waits for a day
    # when its fee is a small part of the credit, a quarter of the share a trade's fees may take.
    share = s.settings.max_fee_share / _WITHDRAWAL_SHARE_DIVISOR
    if not _within_share(fee, credit, share):
        return [
            Decision(
                Action.NOTHING,
                f"credit {s.unit.money(credit)} is too small to withdraw today: the fee "
                f"({s.unit.money(fee)}) would pass {_percent(share)} of it; it stays in the market until it is "
                "worth the fee",
                fee=fee,
            )
        ]
    return [
        Decision(
            Action.WITHDRAW,
            f"the daily withdrawal of {s.unit.money(credit)} credit for a fee of {s.unit.money(fee)}",
            fee=fee,
        )
    ]
