"""The autopilot's decision rules (custom_components/energykart/autopilot.py), without a chain.

Prices are EURe per kWh in 10^-18 units; gas is priced at 0.01 gwei, 1 ETH = 3000 EURe, so one
gas costs 3 * 10^10 units (3 * 10^-8 EURe).
"""

from __future__ import annotations

import dataclasses
import sys
from decimal import Decimal
from fractions import Fraction

import pytest

from energykart_demo.strategy import AUTOPILOT_PATH
from energykart_demo.strategy import autopilot as ap

EUR = 10**18
CENT = EUR // 100
FEES = ap.Fees.for_currency(ap.ERC20_GAS, 10**7, Decimal(3000))
TARIFF = ap.Tariff.fixed(30 * CENT, 8 * CENT)
SETTINGS = ap.Settings(margin=5 * CENT, daily_budget=5 * EUR, max_offer_wh=4000, horizon_steps=4)


def situation(
    surplus: tuple[int, ...] = (),
    need: tuple[int, ...] = (),
    offers: tuple[ap.MarketOffer, ...] = (),
    connections: tuple[ap.MarketConnection, ...] = (),
    **changes: object,
) -> ap.Situation:
    household = ap.Household(surplus_wh=surplus, need_wh=need)
    base = ap.Situation(
        step=0,
        tariff=TARIFF,
        settings=SETTINGS,
        fees=FEES,
        household=household,
        offers=offers,
        connections=connections,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def offer(offer_id: int, energy_wh: int, start: int = 13 * CENT, **changes: object) -> ap.MarketOffer:
    base = ap.MarketOffer(
        id=offer_id, energy_wh=energy_wh, start_price=start, price=0, min_next_bid=start, mine=False, leading=False
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def actions(decisions: list[ap.Decision]) -> list[ap.Action]:
    return [d.action for d in decisions]


def test_it_loads_without_home_assistant() -> None:
    assert AUTOPILOT_PATH.name == "autopilot.py"
    assert AUTOPILOT_PATH.parent.name == "energykart"
    assert "homeassistant" not in sys.modules


def test_money_is_exact_and_fees_round_up() -> None:
    assert ap.to_units("0.30") == 3 * 10**17
    assert ap.to_units(Decimal("0.000001"), 6) == 1
    with pytest.raises(ValueError, match="decimals"):
        ap.to_units("0.0000001", 6)
    assert FEES.cost(242_102) == 242_102 * 10**7 * 3000  # createOffer + bid + finalize: 0.0073 EURe
    odd = ap.Fees.for_currency(ap.ERC20_GAS, 10**7, Decimal("2999.99"))
    assert odd.cost(1) == 29_999_900_000  # exact
    third = ap.Fees(ap.NATIVE_GAS, 1, Fraction(1, 3))
    assert third.cost(1) == 1  # a third of a unit is still a unit to pay
    native = ap.Fees.for_currency(ap.NATIVE_GAS, 10**7, None)
    assert native.cost(21_000) == 21_000 * 10**7  # an ETH market pays gas in its own unit
    assert ap.value_of(19 * CENT, 1500) == 285 * CENT // 10


def test_a_surplus_is_offered_at_feed_in_plus_margin() -> None:
    (decision,) = ap.decide(situation(surplus=(1200, 900, 800, 700)))
    assert decision.action is ap.Action.OFFER
    assert decision.energy_wh == 3600
    assert decision.price == 13 * CENT  # 0.08 + 0.05
    assert decision.fee == FEES.cost(ap.ERC20_GAS.create_offer)
    assert decision.gain == ap.value_of(5 * CENT, 3600)
    assert decision.reason == (
        "3600 Wh of surplus over the next 4 timesteps from 0.1300 EURe/kWh (feed-in 0.0800 EURe/kWh + margin): "
        "gains 0.1800 EURe over feed-in for a fee of 0.0026 EURe"
    )


def test_reasons_write_amounts_in_the_currency() -> None:
    eure = ap.Unit()
    assert eure.price(19 * CENT) == "0.1900 EURe/kWh"
    assert eure.money(374_870_000_000_000_000) == "0.3749 EURe"
    assert eure.money(2_620_500_000_000_000) == "0.0026 EURe"  # below a cent: two significant digits
    assert eure.money(0) == "0.0000 EURe"
    assert ap.Unit("ETH").price(63_333_333_333_333) == "0.000063 ETH/kWh"
    assert ap.Unit("USDC", 6).money(1_500_000) == "1.5000 USDC"
    native = situation(
        surplus=(1200, 900, 800, 700),
        tariff=ap.Tariff.fixed(10**14, 3 * 10**13),
        settings=dataclasses.replace(SETTINGS, margin=2 * 10**13),
        fees=ap.Fees.for_currency(ap.NATIVE_GAS, 10**7, None),
        unit=ap.Unit("ETH"),
    )
    (decision,) = ap.decide(native)
    assert "from 0.000050 ETH/kWh (feed-in 0.000030 ETH/kWh + margin)" in decision.reason
    assert str(decision.price) not in decision.reason  # the integer stays in the decision


def test_an_offer_is_capped_and_covers_only_the_run_of_surplus_that_starts_next() -> None:
    (capped,) = ap.decide(situation(surplus=(3000, 3000, 3000, 3000)))
    assert capped.energy_wh == SETTINGS.max_offer_wh
    (run,) = ap.decide(situation(surplus=(900, 800, 0, 3000)))
    assert run.energy_wh == 1700  # a buyer draws from the award on: the surplus after the gap waits
    later = ap.decide(situation(surplus=(0, 3000, 3000, 3000)))
    assert actions(later) == [ap.Action.NOTHING]


def test_battery_energy_above_the_reserve_is_offered_too() -> None:
    battery = dataclasses.replace(
        situation(surplus=(500, 500)).household, battery_wh=5000, battery_capacity_wh=10_000
    )  # reserve 30 %: 2000 Wh above it
    (decision,) = ap.decide(situation(household=battery))
    assert decision.energy_wh == 1000 + 2000
    empty = dataclasses.replace(battery, battery_wh=2500, surplus_wh=())
    (decision,) = ap.decide(situation(household=empty))
    assert decision.action is ap.Action.NOTHING  # 500 Wh above the reserve: too little for the fee


def test_an_offer_too_small_for_its_fee_is_not_made() -> None:
    (decision,) = ap.decide(situation(surplus=(300,)))
    assert decision.action is ap.Action.NOTHING
    assert "does not cover the offer's fee" in decision.reason
    # The smallest offer worth it: the fee is 2 % of its value at 0.13 EURe/kWh.
    fee = FEES.cost(ap.ERC20_GAS.create_offer)
    smallest = -(-fee * 50 * 1000 // (13 * CENT))
    (made,) = ap.decide(situation(surplus=(smallest // 10 * 10 + 10,)))
    assert made.action is ap.Action.OFFER
    (refused,) = ap.decide(situation(surplus=(smallest // 10 * 10 - 10,)))
    assert refused.action is ap.Action.NOTHING


def test_a_small_surplus_is_offered_for_longer_when_the_horizon_may_grow() -> None:
    # 150 Wh a timestep: 600 Wh over the horizon of 4 is worth 0.078 EURe at 0.13, and the offer's
    # fee (0.0026 EURe) would be 3.4 % of it. Allowed to look up to 12 timesteps ahead, the
    # autopilot offers the first run that is worth the fee: 7 timesteps, 1050 Wh, 1.9 %.
    trickle = (150,) * 12
    (fixed,) = ap.decide(situation(surplus=trickle))
    assert fixed.action is ap.Action.NOTHING
    assert "600 Wh" in fixed.reason
    assert "does not cover the offer's fee" in fixed.reason
    longer = dataclasses.replace(SETTINGS, longest_horizon_steps=12)
    (offer_,) = ap.decide(situation(surplus=trickle, settings=longer))
    assert offer_.action is ap.Action.OFFER
    assert (offer_.energy_wh, offer_.horizon_steps) == (1050, 7)
    assert "over the next 7 timesteps" in offer_.reason
    # Never further than the forecast reaches, nor than the longest horizon.
    (short,) = ap.decide(situation(surplus=trickle[:6], settings=longer))
    assert short.action is ap.Action.NOTHING
    assert "900 Wh" in short.reason  # the furthest it looked: 6 timesteps
    capped = dataclasses.replace(SETTINGS, longest_horizon_steps=6)
    assert ap.decide(situation(surplus=trickle, settings=capped))[0].action is ap.Action.NOTHING
    # An offer at the settings' horizon covers that horizon.
    (plain,) = ap.decide(situation(surplus=(1200, 900, 800, 700), settings=longer))
    assert (plain.action, plain.horizon_steps) == (ap.Action.OFFER, 4)


def test_a_small_need_is_bought_for_longer_when_the_horizon_may_grow() -> None:
    # 100 Wh a timestep against an offer of 1200 Wh: over 4 timesteps the bid, its close and the
    # seller's offer would cost far more than 2 % of the 400 Wh drawn. Over 12 timesteps the need
    # takes the whole offer: no close, the bid's fees 1.7 % of its value.
    need = (100,) * 16
    refused = ap.decide(situation(need=need, offers=(offer(1, 1200),)))
    assert actions(refused) == [ap.Action.NOTHING]
    assert "the trade's fees" in refused[0].reason
    longer = dataclasses.replace(SETTINGS, longest_horizon_steps=16)
    (bid,) = ap.decide(situation(need=need, offers=(offer(1, 1200),), settings=longer))
    assert (bid.action, bid.offer_id, bid.horizon_steps) == (ap.Action.BID, 1, 12)
    assert "of the next 12 timesteps' need" in bid.reason
    # Looking further is for a need too small for the fees only: not past a price above the
    # limit, the daily budget, or an offer that already has a bid.
    dear = ap.decide(situation(need=need, offers=(offer(1, 1200, start=26 * CENT),), settings=longer))
    assert "above retail - margin" in dear[0].reason
    broke = dataclasses.replace(situation(need=need).household, spent_today=5 * EUR - CENT)
    assert "daily budget" in ap.decide(situation(household=broke, offers=(offer(1, 1200),), settings=longer))[0].reason
    taken = ap.decide(situation(need=need, offers=(offer(1, 1200, price=19 * CENT),), settings=longer))
    assert actions(taken) == [ap.Action.NOTHING]
    # The connection it opens is closed when the timesteps it was bought for are over, not before.
    bought = ap.MarketConnection(
        id=1, buying=True, price=19 * CENT, cap_wh=1200, delivered_wh=500, age_steps=5, bought_for_steps=12
    )
    assert ap.Action.CLOSE not in actions(ap.decide(situation(connections=(bought,), settings=longer)))
    over = dataclasses.replace(bought, age_steps=12, delivered_wh=1150)
    assert actions(ap.decide(situation(connections=(over,), settings=longer))) == [ap.Action.CLOSE]


def test_no_offer_while_supply_waits_for_buyers_or_after_an_unsold_one() -> None:
    waiting = ap.decide(situation(surplus=(2000, 2000), offers=(offer(7, 2000),)))
    assert actions(waiting) == [ap.Action.NOTHING]
    assert "#7 still waits for a bid" in waiting[0].reason
    sold_out = ap.decide(situation(surplus=(2000, 2000), offers=(offer(7, 2000, price=19 * CENT),)))
    assert actions(sold_out) == [ap.Action.OFFER]
    unsold = ap.decide(situation(surplus=(2000, 2000), unsold_steps_ago=2))
    assert actions(unsold) == [ap.Action.NOTHING]
    assert "found no buyer 2 timesteps ago" in unsold[0].reason


def test_what_is_sold_or_offered_is_not_offered_again() -> None:
    mine = offer(3, 2500, mine=True, price=19 * CENT)
    sold = ap.MarketConnection(id=2, buying=False, price=19 * CENT, cap_wh=1000, delivered_wh=400, age_steps=1)
    (decision,) = ap.decide(situation(surplus=(2000, 2000, 2000), offers=(mine,), connections=(sold,)))
    assert decision.energy_wh == 6000 - 2500 - 600


def test_a_buyer_drawing_slowly_leaves_the_rest_of_the_surplus_to_others() -> None:
    slow = ap.MarketConnection(
        id=2, buying=False, price=19 * CENT, cap_wh=4000, delivered_wh=200, age_steps=2, bought_for_steps=6
    )
    # 100 Wh a timestep so far: about 3 x 100 Wh more (with a quarter to spare) before its 6 timesteps end.
    assert slow.expected_draw_wh(4) == 375
    (decision,) = ap.decide(situation(surplus=(1000, 1000, 1000), connections=(slow,)))
    assert decision.energy_wh == 2620  # 3000 - 375, in steps of 10 Wh
    ending = dataclasses.replace(slow, age_steps=5)
    assert ending.expected_draw_wh(4) == 0
    new = dataclasses.replace(slow, age_steps=0, delivered_wh=0)
    assert new.expected_draw_wh(4) == 4000  # no pace to go by yet: all of it


def test_a_need_is_bid_for_halfway_between_start_price_and_limit() -> None:
    offers = (offer(1, 1000), offer(2, 3000), offer(3, 4000))
    (decision,) = ap.decide(situation(need=(800, 700, 600, 500), offers=offers))
    assert decision.action is ap.Action.BID
    assert decision.offer_id == 2  # the smallest offer that covers the 2600 Wh need
    assert decision.price == (13 * CENT + 25 * CENT) // 2  # 0.19: seller and buyer share the gain
    # It will close the connection after the horizon: the fee counts the close too.
    assert decision.fee == FEES.cost(ap.ERC20_GAS.approve + ap.ERC20_GAS.bid + ap.ERC20_GAS.close)
    assert decision.gain == ap.value_of(30 * CENT, 2600) - ap.value_of(19 * CENT, 2600)


def test_a_need_larger_than_every_offer_takes_the_largest_then_more() -> None:
    offers = (offer(1, 2000), offer(2, 2500))
    decisions = ap.decide(situation(need=(2000, 2000, 2000), offers=offers))
    assert [(d.action, d.offer_id) for d in decisions] == [(ap.Action.BID, 2), (ap.Action.BID, 1)]
    assert decisions[0].fee == FEES.cost(ap.ERC20_GAS.approve + ap.ERC20_GAS.bid)  # completes by itself


def test_a_need_far_below_an_offer_leaves_it_to_a_neighbour_whose_need_fits() -> None:
    # 1500 Wh of a 4000 Wh offer: the bid, its close and the seller's offer would cost 2.8 % of
    # the 0.285 EURe drawn; the rest of the offer would go unsold.
    loose = ap.decide(situation(need=(1500,), offers=(offer(1, 4000),)))
    assert actions(loose) == [ap.Action.NOTHING]
    assert "the trade's fees" in loose[0].reason
    (fits,) = ap.decide(situation(need=(1500,), offers=(offer(1, 1500),)))
    assert fits.action is ap.Action.BID  # it completes by itself: no close, the seller's energy all sold


def test_no_bid_that_does_not_pay_off() -> None:
    small = ap.decide(situation(need=(300,), offers=(offer(1, 2000),)))
    assert actions(small) == [ap.Action.NOTHING]
    assert "no bid pays off" in small[0].reason
    dear = ap.decide(situation(need=(3000,), offers=(offer(1, 3000, start=26 * CENT),)))
    assert actions(dear) == [ap.Action.NOTHING]
    assert "above retail - margin" in dear[0].reason
    own = ap.decide(situation(need=(3000,), offers=(offer(1, 3000, mine=True),)))
    assert "no offer is open to bid on" in own[0].reason


def test_the_daily_budget_is_kept() -> None:
    spent = dataclasses.replace(situation(need=(3000,)).household, spent_today=5 * EUR - 50 * CENT)
    decisions = ap.decide(situation(household=spent, offers=(offer(1, 3000),)))
    assert actions(decisions) == [ap.Action.NOTHING]
    assert "daily budget" in decisions[0].reason


def test_an_outbid_only_when_bidding_closes_with_nothing_yet_and_at_the_limit() -> None:
    led = offer(1, 5000, price=19 * CENT, min_next_bid=19 * CENT + 10**9)
    early = ap.decide(situation(need=(5000,), offers=(led,)))
    assert actions(early) == [ap.Action.NOTHING]
    (late,) = ap.decide(situation(need=(5000,), offers=(led,), bidding_closes=True))
    assert late.action is ap.Action.BID
    assert late.price == 25 * CENT  # at once at the limit: no creeping up bid by bid
    assert "outbids" in late.reason
    covered = ap.MarketConnection(id=9, buying=True, price=19 * CENT, cap_wh=1000, delivered_wh=0, age_steps=0)
    fed = ap.decide(situation(need=(5000,), offers=(led,), connections=(covered,), bidding_closes=True))
    assert actions(fed) == [ap.Action.NOTHING]  # it has energy for the horizon: no war over the rest
    small = ap.decide(situation(need=(3000,), offers=(offer(1, 3000, price=19 * CENT),), bidding_closes=True))
    assert actions(small) == [ap.Action.NOTHING]  # saving 0.05 x 3 kWh: its fee would be 2.6 % of that
    assert "of its saving" in small[0].reason


def test_a_connection_is_closed_when_its_timesteps_are_over_or_it_stops_paying_off() -> None:
    running = ap.MarketConnection(
        id=4, buying=True, price=19 * CENT, cap_wh=3000, delivered_wh=1000, age_steps=1, bought_for_steps=3
    )
    assert ap.Action.CLOSE not in actions(ap.decide(situation(connections=(running,))))
    over = dataclasses.replace(running, age_steps=3)
    (close,) = ap.decide(situation(connections=(over,)))
    assert (close.action, close.connection_id) == (ap.Action.CLOSE, 4)
    assert "need is met" in close.reason
    night = ap.Tariff((30 * CENT, 20 * CENT), (8 * CENT,))  # retail falls to 0.20: 0.15 after the margin
    (dear,) = ap.decide(situation(connections=(running,), tariff=night))
    assert dear.action is ap.Action.CLOSE
    assert "more than retail - margin" in dear.reason
    completed = dataclasses.replace(over, delivered_wh=3000)
    assert ap.Action.CLOSE not in actions(ap.decide(situation(connections=(completed,))))
    sold = dataclasses.replace(over, buying=False)
    assert ap.Action.CLOSE not in actions(ap.decide(situation(connections=(sold,))))


def test_credit_is_withdrawn_daily_when_it_is_worth_the_fee() -> None:
    credit = dataclasses.replace(situation().household, credit=30 * CENT)
    assert actions(ap.decide(situation(household=credit))) == [ap.Action.NOTHING]
    (withdraw,) = ap.decide(situation(household=credit, withdraw_due=True))
    assert withdraw.action is ap.Action.WITHDRAW
    assert withdraw.fee == FEES.cost(ap.ERC20_GAS.withdraw)
    # 0.20 EURe: the fee would be 0.66 % of it, more than a quarter of the 2 % share; it waits.
    small = dataclasses.replace(credit, credit=20 * CENT)
    (waits,) = ap.decide(situation(household=small, withdraw_due=True))
    assert waits.action is ap.Action.NOTHING
    assert "stays in the market" in waits.reason
    crumbs = dataclasses.replace(credit, credit=5 * CENT // 100)
    (kept,) = ap.decide(situation(household=crumbs, withdraw_due=True))
    assert kept.action is ap.Action.NOTHING
    assert "too small to withdraw" in kept.reason


def test_a_day_ahead_tariff_is_read_per_timestep() -> None:
    curve = ap.Tariff((30 * CENT, 22 * CENT, 35 * CENT), (10 * CENT, 2 * CENT, 9 * CENT))
    assert curve.retail_at(1) == 22 * CENT
    assert curve.feed_in_at(7) == 9 * CENT  # past the curve: its last value
    # The offer asks the highest feed-in of its horizon + margin; the bid's limit is the lowest retail.
    (sell,) = ap.decide(situation(surplus=(2000, 2000), tariff=curve))
    assert sell.price == 9 * CENT + 5 * CENT
    (buy,) = ap.decide(situation(need=(2000, 1000), tariff=curve, offers=(offer(1, 3000, start=14 * CENT),)))
    assert buy.price == (14 * CENT + 17 * CENT) // 2


def test_nothing_to_do_says_why() -> None:
    (decision,) = ap.decide(situation())
    assert decision.action is ap.Action.NOTHING
    assert decision.reason
