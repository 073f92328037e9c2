"""Pull payments: withdraw, claim, the account views, and re-entrancy from a malicious receiver.

In both currency modes, except the receiver whose receive() re-enters the market: Ether only (a
token market's counterpart, a token that calls back into the market, is in test_token.py)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3.contract import Contract

from tests.chain import NATIVE, STATUS, Chain, only
from tests.contract.solidity import deploy

PRICE = 10**12 + 7  # wei per kWh
BASELINE = 1000
STEP = 10**9  # the fixture's minBidIncrement
# Reenterer.Mode
ACCEPT, WITHDRAW, WITHDRAW_SWALLOW, BID = range(4)
ZERO = "0x0000000000000000000000000000000000000000"


def pay(price: int, wh: int) -> int:
    return price * wh // 1000


def escrow(price: int, wh: int) -> int:
    return (price * wh + 999) // 1000


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


@pytest.fixture
def reenterer(chain: Chain, test_contracts: dict[str, dict[str, Any]]) -> Contract:
    """A malicious receiver (Reenterer.sol) deployed against this test's market."""
    return deploy(chain.w3, test_contracts["Reenterer"], chain.accounts[20], chain.market.address)


def reported_meter(chain: Chain, owner: str) -> LocalAccount:
    meter = chain.new_meter(owner)
    chain.settle(chain.sign(meter, BASELINE, chain.now()))
    return meter


def deliver(chain: Chain, meter: LocalAccount, cumulative_wh: int) -> None:
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, cumulative_wh, t))


def withdraw(chain: Chain, account: str) -> tuple[int, Any]:
    """claimAndWithdraw as `account`, claiming all its open connections: (currency it gained, net
    of gas in native mode, receipt)."""
    before = chain.funds(account)
    receipt = chain.withdraw_all(account)
    return chain.funds(account) - before + chain.fee(receipt), receipt


def test_withdraw_pays_outbid_credit(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    rival = chain.accounts[3]
    rival_meter = reported_meter(chain, rival)
    offer_id = chain.create_offer(seller, 5000, PRICE)
    chain.place_bid(offer_id, buyer, meter.address, PRICE)
    chain.place_bid(offer_id, rival, rival_meter.address, PRICE + STEP)
    refund = escrow(PRICE, 5000)
    gained, receipt = withdraw(chain, buyer)
    assert gained == refund
    assert chain.events(receipt, "Withdrawn") == [{"account": buyer, "amountWei": refund}]
    assert chain.credit(buyer) == 0
    assert chain.balance() == escrow(PRICE + STEP, 5000)
    chain.assert_conserved()
    assert chain.reverts(m.withdraw(), buyer) == ("NothingToWithdraw", ())
    chain.assert_conserved()


def test_nothing_to_withdraw(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    assert chain.reverts(m.withdraw(), chain.accounts[9]) == ("NothingToWithdraw", ())
    # Escrow is not credit: a leading bidder and a buyer before delivery have nothing to withdraw.
    offer_id = chain.create_offer(seller, 5000, PRICE)
    chain.place_bid(offer_id, buyer, meter.address, PRICE)
    assert chain.reverts(m.withdraw(), buyer) == ("NothingToWithdraw", ())
    chain.travel(600)
    chain.tx(m.finalize(offer_id), seller)
    assert chain.reverts(m.withdraw(), buyer) == ("NothingToWithdraw", ())
    assert chain.reverts(m.withdraw(), seller) == ("NothingToWithdraw", ())
    assert chain.escrow(buyer) == escrow(PRICE, 5000)
    chain.assert_conserved()


def test_plain_withdraw_pays_stored_credit_only(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    """withdraw() never walks the caller's connections: payment for energy delivered on an open
    connection is not credit until it is claimed (by anyone, or by claimAndWithdraw)."""
    m = chain.market.functions
    connection = chain.award(seller, buyer, meter.address, 4999, PRICE)
    deliver(chain, meter, BASELINE + 1234)
    assert chain.stored_credit(seller) == 0
    assert chain.reverts(m.withdraw(), seller) == ("NothingToWithdraw", ())
    chain.tx(m.claim(connection), chain.accounts[9])
    assert chain.stored_credit(seller) == pay(PRICE, 1234)
    before = chain.funds(seller)
    receipt = chain.tx(m.withdraw(), seller)
    assert chain.funds(seller) - before + chain.fee(receipt) == pay(PRICE, 1234)
    assert chain.events(receipt, "PaymentClaimed") == []
    chain.assert_conserved()


def test_claim_and_withdraw_passes_over_ids_that_are_not_open_connections(
    chain: Chain, seller: str, buyer: str, meter: LocalAccount
) -> None:
    m = chain.market.functions
    connection = chain.award(seller, buyer, meter.address, 4999, PRICE)
    offer = chain.create_offer(seller, 100, PRICE)
    deliver(chain, meter, BASELINE + 10)
    receipt = chain.tx(m.claimAndWithdraw([offer, 12345, connection, connection]), seller)
    assert [e["id"] for e in chain.events(receipt, "PaymentClaimed")] == [connection]
    assert chain.events(receipt, "Withdrawn") == [{"account": seller, "amountWei": pay(PRICE, 10)}]
    assert chain.reverts(m.claimAndWithdraw([connection]), seller) == ("NothingToWithdraw", ())
    chain.assert_conserved()


def test_seller_withdraw_claims_unclaimed_earnings(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    connection = chain.award(seller, buyer, meter.address, 4999, PRICE)
    deliver(chain, meter, BASELINE + 1234)
    assert chain.credit(seller) == pay(PRICE, 1234)
    gained, receipt = withdraw(chain, seller)
    assert gained == pay(PRICE, 1234)
    assert chain.events(receipt, "PaymentClaimed") == [
        {"id": connection, "seller": seller, "deliveredWh": 1234, "amountWei": pay(PRICE, 1234)}
    ]
    assert chain.events(receipt, "Withdrawn") == [{"account": seller, "amountWei": pay(PRICE, 1234)}]
    view = chain.connection(connection)
    assert (STATUS[view["status"]], view["deliveredWh"], view["paidWei"]) == ("Active", 1234, pay(PRICE, 1234))
    assert chain.credit(seller) == 0
    assert chain.escrow(buyer) == escrow(PRICE, 4999) - pay(PRICE, 1234)
    chain.assert_conserved()
    assert chain.reverts(m.claimAndWithdraw([connection]), seller) == ("NothingToWithdraw", ())

    # Only the new energy is paid the second time, with no rounding lost in between.
    deliver(chain, meter, BASELINE + 3001)
    assert chain.credit(seller) == pay(PRICE, 3001) - pay(PRICE, 1234)
    gained, _ = withdraw(chain, seller)
    assert gained == pay(PRICE, 3001) - pay(PRICE, 1234)
    chain.assert_conserved()

    # When the cap completes, the seller's last share arrives; the buyer withdraws the rest.
    deliver(chain, meter, BASELINE + 9000)
    gained, _ = withdraw(chain, seller)
    assert gained == pay(PRICE, 4999) - pay(PRICE, 3001)
    assert escrow(PRICE, 4999) - pay(PRICE, 4999) == 1  # the escrow's rounding comes back
    gained, _ = withdraw(chain, buyer)
    assert gained == escrow(PRICE, 4999) - pay(PRICE, 4999)
    assert chain.balance() == 0
    chain.assert_conserved()


def test_withdraw_gathers_every_source_of_credit(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    """One account: seller of two connections (one completed, one open) and an outbid bidder."""
    other_buyer = chain.accounts[4]
    other_meter = reported_meter(chain, other_buyer)
    seller_meter = reported_meter(chain, seller)
    completed = chain.award(seller, buyer, meter.address, 300, PRICE)
    open_one = chain.award(seller, other_buyer, other_meter.address, 5000, PRICE)
    elsewhere = chain.create_offer(chain.accounts[5], 2000, PRICE)
    chain.place_bid(elsewhere, seller, seller_meter.address, PRICE)
    chain.place_bid(elsewhere, buyer, meter.address, PRICE + STEP)
    deliver(chain, meter, BASELINE + 400)
    deliver(chain, other_meter, BASELINE + 777)
    assert STATUS[chain.connection(completed)["status"]] == "Completed"
    expected = pay(PRICE, 300) + pay(PRICE, 777) + escrow(PRICE, 2000)
    assert chain.credit(seller) == expected
    gained, receipt = withdraw(chain, seller)
    assert gained == expected
    assert [e["id"] for e in chain.events(receipt, "PaymentClaimed")] == [open_one]
    assert chain.open_ids(seller) == [open_one]
    chain.assert_conserved()


def test_claim_moves_payment_into_credit(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    connection = chain.award(seller, buyer, meter.address, 5000, PRICE)
    deliver(chain, meter, BASELINE + 2222)
    receipt = chain.tx(m.claim(connection), chain.accounts[9])  # anyone may claim for the seller
    assert chain.events(receipt, "PaymentClaimed") == [
        {"id": connection, "seller": seller, "deliveredWh": 2222, "amountWei": pay(PRICE, 2222)}
    ]
    assert chain.credit(seller) == pay(PRICE, 2222)
    assert chain.connection(connection)["paidWei"] == pay(PRICE, 2222)
    receipt = chain.tx(m.claim(connection), chain.accounts[9])
    assert chain.events(receipt, "PaymentClaimed") == []
    assert chain.credit(seller) == pay(PRICE, 2222)
    chain.assert_conserved()
    gained, receipt = withdraw(chain, seller)
    assert gained == pay(PRICE, 2222)
    assert chain.events(receipt, "PaymentClaimed") == []
    chain.assert_conserved()

    offer_id = chain.create_offer(seller, 100, PRICE)
    assert chain.reverts(m.claim(offer_id), seller) == ("WrongStatus", (offer_id, STATUS.index("Bidding")))
    assert chain.reverts(m.claim(99), seller) == ("UnknownOffer", (99,))


def test_account_views(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    buyer_as_seller = chain.create_offer(buyer, 700, PRICE)
    connection = chain.award(seller, buyer, meter.address, 5000, PRICE)
    bidding = chain.create_offer(chain.accounts[5], 2000, PRICE)
    chain.place_bid(bidding, buyer, meter.address, PRICE)
    deliver(chain, meter, BASELINE + 100)

    assert chain.open_ids(buyer) == [connection, buyer_as_seller]  # newest first; bids are not listed
    assert chain.open_ids(seller) == [connection]
    assert chain.open_ids(chain.accounts[5]) == [bidding]
    assert chain.escrow(buyer) == escrow(PRICE, 5000) - pay(PRICE, 100) + escrow(PRICE, 2000)
    assert chain.credit(buyer) == 0
    assert chain.credit(seller) == pay(PRICE, 100)
    assert chain.stored_credit(seller) == 0
    assert chain.escrow(seller) == 0
    # One page at a time: the account's own numbers on every page, the sums over the page's ids.
    first = m.accountOf(buyer, 0, 1).call()
    assert first == (0, escrow(PRICE, 2000), [connection], 0, escrow(PRICE, 5000) - pay(PRICE, 100), buyer_as_seller)
    assert m.accountOf(buyer, first[-1], 1).call() == (0, escrow(PRICE, 2000), [buyer_as_seller], 0, 0, 0)
    assert m.accountOf(seller, 0, 10).call() == (0, 0, [connection], pay(PRICE, 100), 0, 0)
    assert m.accountOf(seller, 0, 0).call() == (0, 0, [], 0, 0, connection)
    assert m.accountOf(chain.accounts[9], 0, 10).call() == (0, 0, [], 0, 0, 0)
    # A cursor must be one of the account's records.
    assert chain.reverts(m.accountOf(seller, buyer_as_seller, 10), seller) == ("UnknownOffer", (buyer_as_seller,))
    assert chain.reverts(m.accountOf(seller, 2**32 + connection, 10), seller) == ("UnknownOffer", (2**32 + connection,))
    # A bid is not in the bidder's list: as a cursor it would count its escrow twice.
    assert chain.reverts(m.accountOf(buyer, bidding, 10), buyer) == ("UnknownOffer", (bidding,))
    chain.assert_conserved()


# ------------------------------------------------------------------ re-entrancy (Ether: receive() re-enters)


def reenterer_with_credit(chain: Chain, reenterer: Contract, seller: str, buyer: str, meter: LocalAccount) -> int:
    """Make `reenterer` an outbid bidder: its escrow becomes credit. Returns the credit."""
    own_meter = chain.new_meter(reenterer.address)
    chain.settle(chain.sign(own_meter, BASELINE, chain.now()))
    offer_id = chain.create_offer(seller, 5000, PRICE)
    credit = escrow(PRICE, 5000)
    chain.tx(reenterer.functions.bid(offer_id, PRICE, own_meter.address), chain.accounts[20], credit)
    chain.place_bid(offer_id, buyer, meter.address, PRICE + STEP)
    assert chain.credit(reenterer.address) == credit
    return credit


@only(NATIVE)
def test_reentrant_withdraw_reverts_whole_payout(
    chain: Chain, reenterer: Contract, seller: str, buyer: str, meter: LocalAccount
) -> None:
    attacker = chain.accounts[20]
    credit = reenterer_with_credit(chain, reenterer, seller, buyer, meter)
    market_before = chain.balance()
    chain.tx(reenterer.functions.arm(WITHDRAW, 0, 0, ZERO), attacker)
    # The inner withdraw() reverts with Reentrancy, so the payment fails and so does the outer one.
    assert chain.reverts(reenterer.functions.withdraw(), attacker) == (
        "TransferFailed",
        (reenterer.address, credit),
    )
    assert chain.balance() == market_before
    assert chain.funds(reenterer.address) == 0
    assert reenterer.functions.received().call() == 0
    assert chain.credit(reenterer.address) == credit
    chain.assert_conserved(reenterer.address)

    # Disarmed, it is paid its credit, once.
    chain.tx(reenterer.functions.arm(ACCEPT, 0, 0, ZERO), attacker)
    chain.tx(reenterer.functions.withdraw(), attacker)
    assert chain.funds(reenterer.address) == credit
    assert reenterer.functions.payments().call() == 1
    assert chain.credit(reenterer.address) == 0
    assert chain.balance() == market_before - credit
    chain.assert_conserved(reenterer.address)


@only(NATIVE)
def test_reentrant_withdraw_swallowed_pays_once(
    chain: Chain, reenterer: Contract, seller: str, buyer: str, meter: LocalAccount
) -> None:
    attacker = chain.accounts[20]
    credit = reenterer_with_credit(chain, reenterer, seller, buyer, meter)
    market_before = chain.balance()
    chain.tx(reenterer.functions.arm(WITHDRAW_SWALLOW, 0, 0, ZERO), attacker)
    receipt = chain.tx(reenterer.functions.withdraw(), attacker)
    assert chain.events(receipt, "Withdrawn") == [{"account": reenterer.address, "amountWei": credit}]
    assert reenterer.functions.innerError().call() == selector("Reentrancy()")
    assert reenterer.functions.payments().call() == 1
    assert reenterer.functions.received().call() == credit
    assert chain.funds(reenterer.address) == credit
    assert chain.balance() == market_before - credit
    assert chain.credit(reenterer.address) == 0
    chain.assert_conserved(reenterer.address)


@only(NATIVE)
def test_reentrant_withdraw_as_seller_pays_once(
    chain: Chain, reenterer: Contract, buyer: str, meter: LocalAccount
) -> None:
    attacker = chain.accounts[20]
    receipt = chain.tx(reenterer.functions.createOffer(5000, PRICE, 600), attacker)
    offer_id = chain.events(receipt, "OfferCreated")[0]["id"]
    chain.place_bid(offer_id, buyer, meter.address, PRICE)
    chain.travel(600)
    chain.tx(chain.market.functions.finalize(offer_id), buyer)
    deliver(chain, meter, BASELINE + 2500)
    earned = pay(PRICE, 2500)
    assert chain.credit(reenterer.address) == earned

    chain.tx(reenterer.functions.arm(WITHDRAW, 0, 0, ZERO), attacker)
    assert chain.reverts(reenterer.functions.claimAndWithdraw([offer_id]), attacker) == (
        "TransferFailed",
        (reenterer.address, earned),
    )
    assert chain.connection(offer_id)["paidWei"] == earned  # the claim was rolled back with it, nothing lost
    assert chain.credit(reenterer.address) == earned
    chain.assert_conserved(reenterer.address)

    chain.tx(reenterer.functions.arm(WITHDRAW_SWALLOW, 0, 0, ZERO), attacker)
    chain.tx(reenterer.functions.claimAndWithdraw([offer_id]), attacker)
    assert chain.funds(reenterer.address) == earned
    assert reenterer.functions.payments().call() == 1
    assert chain.credit(reenterer.address) == 0
    assert chain.escrow(buyer) == escrow(PRICE, 5000) - earned
    chain.assert_conserved(reenterer.address)


@only(NATIVE)
def test_reentrant_bid_during_payout_keeps_books_straight(
    chain: Chain, reenterer: Contract, seller: str, buyer: str, meter: LocalAccount
) -> None:
    """While being paid, the receiver raises its own leading bid elsewhere: the old escrow of that
    bid becomes new credit, owed exactly once, and every wei stays accounted for."""
    attacker = chain.accounts[20]
    credit = reenterer_with_credit(chain, reenterer, seller, buyer, meter)
    own_meter = chain.meter_keys[next(a for a in chain.meter_keys if a != meter.address)]
    other = chain.create_offer(chain.accounts[6], 1000, PRICE)
    held = escrow(PRICE, 1000)
    chain.tx(reenterer.functions.bid(other, PRICE, own_meter.address), attacker, held)
    raised = PRICE + STEP
    assert escrow(raised, 1000) <= credit  # the payout funds the raise
    chain.tx(reenterer.functions.arm(BID, other, raised, own_meter.address), attacker)

    receipt = chain.tx(reenterer.functions.withdraw(), attacker)
    assert chain.events(receipt, "Withdrawn") == [{"account": reenterer.address, "amountWei": credit}]
    assert chain.events(receipt, "Outbid") == [{"id": other, "bidder": reenterer.address, "refundWei": held}]
    assert chain.offer(other)["highestPricePerKWh"] == raised
    assert chain.funds(reenterer.address) == credit - escrow(raised, 1000)
    assert chain.escrow(reenterer.address) == escrow(raised, 1000)
    assert chain.credit(reenterer.address) == held  # the replaced bid's escrow, not the payout again
    chain.assert_conserved(reenterer.address)

    chain.tx(reenterer.functions.arm(ACCEPT, 0, 0, ZERO), attacker)
    chain.tx(reenterer.functions.withdraw(), attacker)
    assert chain.funds(reenterer.address) == credit - escrow(raised, 1000) + held
    assert reenterer.functions.received().call() == credit + held
    assert chain.credit(reenterer.address) == 0
    assert chain.reverts(reenterer.functions.withdraw(), attacker) == ("NothingToWithdraw", ())
    chain.assert_conserved(reenterer.address)
