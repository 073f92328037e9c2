"""Bid rules: minimum price, deadline, exact escrow, meter ownership, self trade, outbids.

In both currency modes; the escrow a bid carries is mode-specific: msg.value in a native market,
an exact token allowance in a token market (the tests marked `only(...)`)."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from tests.chain import ERC20, NATIVE, STATUS, Chain, only

ZERO = "0x0000000000000000000000000000000000000000"
START = 10**12  # wei per kWh
STEP = 10**9  # the fixture's minBidIncrement
ENERGY = 5000


@pytest.fixture
def rival(chain: Chain) -> str:
    return chain.accounts[3]


def _reported_meter(chain: Chain, owner: str) -> LocalAccount:
    meter = chain.new_meter(owner)
    chain.settle(chain.sign(meter, 1000, chain.now()))
    return meter


@pytest.fixture
def meter(chain: Chain, buyer: str) -> LocalAccount:
    return _reported_meter(chain, buyer)


@pytest.fixture
def rival_meter(chain: Chain, rival: str) -> LocalAccount:
    return _reported_meter(chain, rival)


@pytest.fixture
def offer_id(chain: Chain, seller: str) -> int:
    return chain.create_offer(seller, ENERGY, START, 600)


def escrow(price: int, energy: int = ENERGY) -> int:
    return (price * energy + 999) // 1000


def test_bid_escrows_and_leads(chain: Chain, offer_id: int, buyer: str, meter: LocalAccount) -> None:
    chain.fund(buyer, escrow(START))
    before = chain.funds(buyer)
    receipt = chain.place_bid(offer_id, buyer, meter.address, START)
    assert chain.events(receipt, "BidPlaced") == [
        {"id": offer_id, "bidder": buyer, "meter": meter.address, "pricePerKWh": START, "escrowWei": escrow(START)}
    ]
    assert chain.funds(buyer) == before - escrow(START) - chain.fee(receipt)
    offer = chain.offer(offer_id)
    assert (offer["highestPricePerKWh"], offer["highestBidder"], offer["minNextBidPerKWh"]) == (
        START,
        buyer,
        START + STEP,
    )
    assert STATUS[offer["status"]] == "Bidding"
    assert chain.escrow(buyer) == escrow(START)
    assert chain.credit(buyer) == 0
    assert chain.account(buyer) == {"credit": 0, "bidEscrow": escrow(START), "ids": [], "unclaimed": 0, "escrow": 0}
    # a bid is not an open connection yet
    assert chain.balance() == escrow(START)
    chain.assert_conserved()


def test_bid_below_start_is_too_low(chain: Chain, offer_id: int, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    price = START - 1
    assert chain.reverts(m.bid(offer_id, price, meter.address), buyer, escrow(price)) == ("BidTooLow", (START,))
    assert chain.offer(offer_id)["highestBidder"] == ZERO
    assert chain.balance() == 0


def test_bid_must_beat_highest_by_increment(
    chain: Chain, offer_id: int, buyer: str, meter: LocalAccount, rival: str, rival_meter: LocalAccount
) -> None:
    m = chain.market.functions
    chain.place_bid(offer_id, buyer, meter.address, START)
    for price in (START, START + STEP - 1):
        assert chain.reverts(m.bid(offer_id, price, rival_meter.address), rival, escrow(price)) == (
            "BidTooLow",
            (START + STEP,),
        )
    assert chain.offer(offer_id)["highestBidder"] == buyer
    chain.place_bid(offer_id, rival, rival_meter.address, START + STEP)
    assert chain.offer(offer_id)["highestBidder"] == rival
    assert chain.offer(offer_id)["minNextBidPerKWh"] == START + 2 * STEP
    chain.assert_conserved()


def test_bid_after_bidding_ends(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    t = chain.now() + 5
    receipt = chain.tx_at(t, m.createOffer(ENERGY, START, 600), seller)
    offer_id = chain.events(receipt, "OfferCreated")[0]["id"]
    chain.set_next_timestamp(t + 600)
    assert chain.reverts(m.bid(offer_id, START, meter.address), buyer, escrow(START)) == (
        "BiddingOver",
        (offer_id, t + 600),
    )
    assert chain.offer(offer_id)["highestBidder"] == ZERO
    assert chain.balance() == 0


def test_bid_in_last_second(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    t = chain.now() + 5
    chain.tx_at(t, m.createOffer(ENERGY, START, 600), seller)
    chain.tx_at(t + 599, m.bid(1, START, meter.address), buyer, escrow(START))
    assert chain.offer(1)["highestBidder"] == buyer


@only(NATIVE)
@pytest.mark.parametrize("delta", [-1, 1, None], ids=["one-wei-short", "one-wei-over", "nothing"])
def test_bid_needs_exact_escrow(
    chain: Chain, offer_id: int, buyer: str, meter: LocalAccount, delta: int | None
) -> None:
    m = chain.market.functions
    price = START + 7
    required = escrow(price)
    sent = 0 if delta is None else required + delta
    assert chain.reverts(m.bid(offer_id, price, meter.address), buyer, sent) == ("WrongEscrow", (required, sent))
    assert chain.escrow(buyer) == 0
    assert chain.balance() == 0


@only(ERC20)
@pytest.mark.parametrize("delta", [-1, None], ids=["one-unit-short", "nothing"])
def test_token_bid_needs_an_allowance_for_the_escrow(
    chain: Chain, offer_id: int, buyer: str, meter: LocalAccount, delta: int | None
) -> None:
    """The token counterpart of sending the wrong escrow: the pull fails on the allowance."""
    assert chain.token is not None
    m = chain.market.functions
    price = START + 7
    required = escrow(price)
    approved = 0 if delta is None else required + delta
    chain.fund(buyer, 2 * required)
    chain.tx(chain.token.functions.approve(chain.market.address, approved), buyer)
    assert chain.reverts(m.bid(offer_id, price, meter.address), buyer) == (
        "ERC20InsufficientAllowance",
        (chain.market.address, approved, required),
    )
    assert chain.funds(buyer) == 2 * required
    assert chain.escrow(buyer) == 0
    assert chain.offer(offer_id)["highestBidder"] == ZERO
    assert chain.balance() == 0


@only(ERC20)
def test_token_bid_pulls_exactly_the_escrow(chain: Chain, offer_id: int, buyer: str, meter: LocalAccount) -> None:
    """An allowance above the escrow is not spent beyond it; a bidder short of tokens is refused."""
    assert chain.token is not None
    m = chain.market.functions
    price = START + 7
    required = escrow(price)
    chain.fund(buyer, required - 1)
    chain.tx(chain.token.functions.approve(chain.market.address, required + 1), buyer)
    assert chain.reverts(m.bid(offer_id, price, meter.address), buyer) == (
        "ERC20InsufficientBalance",
        (buyer, required - 1, required),
    )
    chain.fund(buyer, required + 5)
    receipt = chain.tx(m.bid(offer_id, price, meter.address), buyer)
    assert chain.events(receipt, "BidPlaced")[0]["escrowWei"] == required
    assert chain.funds(buyer) == 5
    assert chain.token.functions.allowance(buyer, chain.market.address).call() == 1
    assert chain.balance() == required
    chain.assert_conserved()


@only(ERC20)
def test_token_bid_sent_with_value_is_refused(chain: Chain, offer_id: int, buyer: str, meter: LocalAccount) -> None:
    """A token market takes no Ether with a bid, not even along with the full token allowance."""
    m = chain.market.functions
    required = escrow(START)
    chain.bring(buyer, required)
    assert chain.reverts(m.bid(offer_id, START, meter.address), buyer, msg_value=required) == (
        "WrongEscrow",
        (0, required),
    )
    assert chain.w3.eth.get_balance(chain.market.address) == 0
    assert chain.balance() == 0
    assert chain.escrow(buyer) == 0
    chain.place_bid(offer_id, buyer, meter.address, START)  # the same bid without value goes through
    chain.assert_conserved()


def test_escrow_rounds_up(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    """escrow = ceil(price * energy / 1000): the buyer always escrows enough for the whole cap."""
    offer_id = chain.create_offer(seller, 333, 1001)
    assert chain.escrow_for(offer_id, 1001) == 334  # 333.333 rounded up
    assert chain.escrow_for(offer_id, 3000) == 999  # exact, not rounded
    chain.tx(chain.market.functions.bid(offer_id, 1001, meter.address), buyer, 334)
    assert chain.escrow(buyer) == 334
    chain.assert_conserved()


def test_bid_price_over_uint72_rejected(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    offer_id = chain.create_offer(seller, 1, START)
    price = 2**72
    assert chain.reverts(chain.market.functions.bid(offer_id, price, meter.address), buyer, escrow(price, 1)) == (
        "InvalidPrice",
        (price,),
    )


def test_bid_with_someone_elses_meter(
    chain: Chain, offer_id: int, buyer: str, rival_meter: LocalAccount, rival: str
) -> None:
    m = chain.market.functions
    assert chain.reverts(m.bid(offer_id, START, rival_meter.address), buyer, escrow(START)) == (
        "NotMeterOwner",
        (rival_meter.address, rival),
    )
    unregistered = Account.create().address
    assert chain.reverts(m.bid(offer_id, START, unregistered), buyer, escrow(START)) == (
        "NotMeterOwner",
        (unregistered, ZERO),
    )
    assert chain.offer(offer_id)["highestBidder"] == ZERO
    assert chain.balance() == 0


def test_bid_with_meter_that_never_reported(chain: Chain, offer_id: int, buyer: str) -> None:
    """Without a first reading the award would have no baseline and bill the meter's whole history."""
    silent = chain.new_meter(buyer)
    assert chain.reverts(chain.market.functions.bid(offer_id, START, silent.address), buyer, escrow(START)) == (
        "MeterNeverReported",
        (silent.address,),
    )
    chain.settle(chain.sign(silent, 70_000, chain.now()))
    chain.place_bid(offer_id, buyer, silent.address, START)
    assert chain.offer(offer_id)["highestBidder"] == buyer


def test_seller_cannot_bid_on_own_offer(chain: Chain, offer_id: int, seller: str) -> None:
    own_meter = _reported_meter(chain, seller)
    assert chain.reverts(chain.market.functions.bid(offer_id, START, own_meter.address), seller, escrow(START)) == (
        "SelfTrade",
        (),
    )
    assert chain.offer(offer_id)["highestBidder"] == ZERO


def test_bid_on_unknown_or_closed_offer(chain: Chain, offer_id: int, seller: str, buyer: str) -> None:
    m = chain.market.functions
    assert chain.reverts(m.bid(99, START, ZERO), buyer, escrow(START)) == ("UnknownOffer", (99,))
    chain.travel(600)
    chain.tx(m.finalize(offer_id), seller)
    assert chain.reverts(m.bid(offer_id, START, ZERO), buyer, escrow(START)) == (
        "WrongStatus",
        (offer_id, STATUS.index("Expired")),
    )


def test_outbid_escrow_becomes_credit(
    chain: Chain, offer_id: int, buyer: str, meter: LocalAccount, rival: str, rival_meter: LocalAccount
) -> None:
    m = chain.market.functions
    first_price, second_price = START + 3, START + STEP + 11
    chain.place_bid(offer_id, buyer, meter.address, first_price)
    receipt = chain.place_bid(offer_id, rival, rival_meter.address, second_price)
    assert chain.events(receipt, "Outbid") == [{"id": offer_id, "bidder": buyer, "refundWei": escrow(first_price)}]
    assert chain.escrow(buyer) == 0
    assert chain.credit(buyer) == escrow(first_price)
    assert chain.escrow(rival) == escrow(second_price)
    assert chain.credit(rival) == 0
    assert chain.balance() == escrow(first_price) + escrow(second_price)
    chain.assert_conserved()

    # The outbid bidder gets the refund back in the currency, before the auction even ends.
    before = chain.funds(buyer)
    receipt = chain.tx(m.withdraw(), buyer)
    assert chain.events(receipt, "Withdrawn") == [{"account": buyer, "amountWei": escrow(first_price)}]
    assert chain.funds(buyer) == before + escrow(first_price) - chain.fee(receipt)
    assert chain.credit(buyer) == 0
    assert chain.balance() == escrow(second_price)
    chain.assert_conserved()

    # ...and may bid again, above the new highest.
    chain.place_bid(offer_id, buyer, meter.address, second_price + STEP)
    assert chain.credit(rival) == escrow(second_price)
    assert chain.escrow(rival) == 0
    assert chain.escrow(buyer) == escrow(second_price + STEP)
    chain.assert_conserved()


def test_raising_own_bid_refunds_previous_escrow(chain: Chain, offer_id: int, buyer: str, meter: LocalAccount) -> None:
    low, high = START, START + 5 * STEP
    chain.place_bid(offer_id, buyer, meter.address, low)
    receipt = chain.place_bid(offer_id, buyer, meter.address, high)
    assert chain.events(receipt, "Outbid") == [{"id": offer_id, "bidder": buyer, "refundWei": escrow(low)}]
    assert chain.escrow(buyer) == escrow(high)
    assert chain.credit(buyer) == escrow(low)
    chain.assert_conserved()


def test_escrow_sums_bids_on_several_offers(
    chain: Chain, seller: str, buyer: str, meter: LocalAccount, rival: str, rival_meter: LocalAccount
) -> None:
    first = chain.create_offer(seller, 1000, START)
    second = chain.create_offer(chain.accounts[4], 2500, START)
    chain.place_bid(first, buyer, meter.address, START)
    chain.place_bid(second, buyer, meter.address, START + 1)
    assert chain.escrow(buyer) == escrow(START, 1000) + escrow(START + 1, 2500)
    chain.place_bid(first, rival, rival_meter.address, START + STEP)
    assert chain.escrow(buyer) == escrow(START + 1, 2500)
    assert chain.credit(buyer) == escrow(START, 1000)
    chain.assert_conserved()


def test_winner_escrow_moves_into_connection(
    chain: Chain, offer_id: int, seller: str, buyer: str, meter: LocalAccount, rival: str, rival_meter: LocalAccount
) -> None:
    chain.place_bid(offer_id, rival, rival_meter.address, START)
    chain.place_bid(offer_id, buyer, meter.address, START + STEP)
    chain.travel(600)
    chain.tx(chain.market.functions.finalize(offer_id), seller)
    assert chain.escrow(buyer) == escrow(START + STEP)
    assert chain.connection(offer_id)["escrowWei"] == escrow(START + STEP)
    assert chain.credit(rival) == escrow(START)
    assert chain.escrow(rival) == 0
    chain.assert_conserved()
