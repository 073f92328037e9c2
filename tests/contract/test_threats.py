"""Threats of docs/SECURITY.md that the rule tests do not already show.

The last two tests are the findings F1 and F2 of docs/SECURITY.md, fixed by the contract's
MAX_READING_WH: a reading above it is skipped as OutOfRange.
"""

from __future__ import annotations

import pytest
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3.exceptions import ContractCustomError
from web3.types import TxParams, Wei

from tests.chain import SKIP, STATUS, Chain, custom_error

PRICE = 10**12 + 7  # wei per kWh
CAP = 5000  # Wh
BASELINE = 1000
MAX_WH = 2**48 - 1  # the widest cumulative a reading can carry (48 bits of the packed reading)
MAX_READING_WH = 2**48 - 2**32  # the contract's MAX_READING_WH


@pytest.fixture
def seller(chain: Chain) -> str:
    return chain.accounts[1]


@pytest.fixture
def buyer(chain: Chain) -> ChecksumAddress:
    return chain.accounts[2]


@pytest.fixture
def attacker(chain: Chain) -> ChecksumAddress:
    return chain.accounts[3]


def reported_meter(chain: Chain, owner: str, wh: int = BASELINE) -> LocalAccount:
    """A meter registered to `owner` that has reported `wh`."""
    meter = chain.new_meter(owner)
    chain.settle(chain.sign(meter, wh, chain.now()))
    return meter


def test_registrar_cannot_take_over_a_meter_with_open_connections(chain: Chain, seller: str, buyer: str) -> None:
    """A malicious registrar revokes a buyer's meter and registers it to itself: refused while the
    meter backs a connection, and the buyer still gets its escrow back by closing and releasing."""
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    connection = chain.award(seller, buyer, meter.address, CAP, PRICE)
    chain.tx(m.revokeMeter(meter.address), chain.registrar)
    assert chain.reverts(m.registerMeter(meter.address, chain.registrar), chain.registrar) == (
        "MeterHasConnections",
        (meter.address,),
    )
    t = chain.now() + 10
    receipt = chain.settle_at(t, chain.sign(meter, BASELINE + 100, t))  # the revoked meter bills nothing
    assert [SKIP[e["reason"]] for e in chain.events(receipt, "ReadingSkipped")] == ["UnknownMeter"]
    chain.tx(m.closeConnection(connection), buyer)
    chain.travel(901)
    chain.tx(m.release(connection), chain.accounts[-1])
    assert chain.credit(buyer) == chain.escrow_for(connection, PRICE)
    assert chain.credit(seller) == 0
    chain.assert_conserved()


def test_nobody_else_can_lengthen_an_accounts_list(chain: Chain, seller: str, buyer: str, attacker: str) -> None:
    """The account views page through the account's own list, and claimAndWithdraw claims only the
    ids it is given. Another account's offers and bids, also bids on the caller's own offer, add
    nothing to that list, so they cannot make the seller's reads or withdraw dearer."""
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    connection = chain.award(seller, buyer, meter.address, CAP, PRICE)
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, BASELINE + 200, t))
    ids_before = chain.open_ids(seller)
    withdraw_gas = m.claimAndWithdraw([connection]).estimate_gas({"from": seller})

    attacker_meter = reported_meter(chain, attacker)
    own_offer = chain.create_offer(seller, CAP, PRICE)
    for _ in range(20):
        spam = chain.create_offer(attacker, 1, 1)
        chain.place_bid(spam, buyer, meter.address, 1)  # the victims' counterpart bids; still not in a list
    for step in range(5):  # bid churn on the seller's own offer
        chain.place_bid(own_offer, attacker, attacker_meter.address, PRICE + step * 10**9)

    assert chain.open_ids(seller) == [own_offer, *ids_before]  # only the seller's own offer
    assert chain.open_ids(buyer) == [connection]
    assert m.claimAndWithdraw([connection]).estimate_gas({"from": seller}) == withdraw_gas
    chain.assert_conserved()


def test_front_run_bid_costs_the_victim_only_gas(
    chain: Chain, seller: str, buyer: ChecksumAddress, attacker: str
) -> None:
    """A front-runner's bid lands first: the victim's bid at the same price reverts with the price it
    must beat, and the victim loses only the gas of the failed transaction, never the escrow (in a
    token market the approved escrow stays in the victim's wallet)."""
    m = chain.market.functions
    victim_meter = reported_meter(chain, buyer)
    attacker_meter = reported_meter(chain, attacker)
    offer = chain.create_offer(seller, CAP, PRICE)
    chain.place_bid(offer, attacker, attacker_meter.address, PRICE)
    params: TxParams = {"from": buyer, "value": Wei(chain.bring(buyer, chain.escrow_for(offer, PRICE))), "gas": 300_000}
    before = chain.funds(buyer)
    tx_hash = m.bid(offer, PRICE, victim_meter.address).transact(params)
    receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 0
    assert chain.funds(buyer) == before - chain.fee(receipt)
    with pytest.raises(ContractCustomError) as err:
        m.bid(offer, PRICE, victim_meter.address).call(params)
    assert custom_error(err.value) == ("BidTooLow", (PRICE + 10**9,))
    assert chain.escrow(buyer) == 0
    chain.assert_conserved()


def test_meter_clock_ahead_within_skew_moves_only_its_own_reading_window(chain: Chain, seller: str, buyer: str) -> None:
    """A meter clock running ahead, within MAX_CLOCK_SKEW: its reading settles, and the meter's
    later readings must be later still (a slow clock cannot rewind it). Beyond the skew: skipped."""
    skew = int(chain.market.functions.MAX_CLOCK_SKEW().call())
    meter = reported_meter(chain, buyer)
    connection = chain.award(seller, buyer, meter.address, CAP, PRICE)
    t = chain.now() + 10
    receipt = chain.settle_at(
        t, chain.sign(meter, BASELINE + 500, t + skew + 1), chain.sign(meter, BASELINE + 400, t + skew)
    )
    assert [SKIP[e["reason"]] for e in chain.events(receipt, "ReadingSkipped")] == ["FutureTimestamp"]
    assert chain.connection(connection)["deliveredWh"] == 400
    receipt = chain.settle_at(t + 60, chain.sign(meter, BASELINE + 450, t + 60))  # the correct clock
    assert [SKIP[e["reason"]] for e in chain.events(receipt, "ReadingSkipped")] == ["NotNewer"]
    assert chain.connection(connection)["deliveredWh"] == 400
    chain.assert_conserved()


def test_wrapping_cumulative_cannot_freeze_a_sellers_withdrawals(
    chain: Chain, seller: str, buyer: str, attacker: str
) -> None:
    """A buyer that holds its own meter's key wins an offer, then relays a reading its meter signed
    before the award with a cumulative near 2**48. The seller's credit from other trades must stay
    withdrawable, and other meters' readings must still settle in the same batch."""
    honest_meter = reported_meter(chain, buyer)
    chain.award(seller, buyer, honest_meter.address, CAP, PRICE)
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(honest_meter, BASELINE + 1000, t))
    earned = chain.credit(seller)
    assert earned > 0

    attacker_meter = reported_meter(chain, attacker)
    first_report = chain.meter(attacker_meter.address)["lastTimestamp"]
    chain.award(seller, attacker, attacker_meter.address, CAP, PRICE)
    poison = chain.sign(attacker_meter, MAX_WH, first_report + 1)  # "taken" before the award
    receipt = chain.settle(poison, sender=attacker)
    assert [SKIP[e["reason"]] for e in chain.events(receipt, "ReadingSkipped")] == ["OutOfRange"]

    t = chain.now() + 10
    receipt = chain.settle_at(t, chain.sign(honest_meter, BASELINE + 1100, t), chain.sign(attacker_meter, MAX_WH, t))
    assert len(chain.events(receipt, "ReadingsAccepted")[0]["readings"]) >= 1
    chain.withdraw_all(seller)
    assert chain.credit(seller) == 0


def test_huge_meter_reading_cannot_freeze_an_auction(chain: Chain, seller: str, attacker: str) -> None:
    """A bidder whose meter reports a cumulative near 2**48 wins an offer: the award must still
    settle the auction one way or the other, never leave it stuck with the escrow locked."""
    m = chain.market.functions
    meter = reported_meter(chain, attacker, MAX_READING_WH)  # the largest reading the contract accepts
    offer = chain.create_offer(seller, CAP, PRICE)
    chain.place_bid(offer, attacker, meter.address, PRICE)
    chain.travel(600)
    chain.tx(m.finalize(offer), chain.accounts[-1])
    assert STATUS[chain.offer(offer)["status"]] != "Bidding"
