"""The outside review's findings (issue 9, docs/SECURITY.md F4-F10), each as the attack and the defence.

F4  a buyer fills its meter's queue with 1-Wh self-dealt connections to make one reading too dear
    to settle and to slip a real seller's connection past billing;
F5  a bid survives a change of its meter's owner and bills the new owner's consumption to it;
F6  a buyer who wins many small offers and never draws locks the seller's withdraw and reads;
F7  bits of the packed reading that the signature does not cover give one reading two encodings;
F8  offers whose bidding is over are listed as open;
F9  `biddingEnds` wraps in 2106;
F10 Ether forced in (selfdestruct) makes the balance exceed escrows plus credits; in a token market,
    tokens transferred straight to the market do the same.

Every finding runs in both currency modes; F10's way in is the mode's own.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from web3 import Web3
from web3.types import Wei

from devchain.anvil import Anvil
from devchain.deploy import deploy_token
from oracle.readings import SignedReading
from tests.chain import ERC20, MODES, NATIVE, SKIP, STATUS, Chain, only

PRICE = 10**12 + 7  # wei per kWh
BASELINE = 1000
MAX_QUEUE = 8
IDLE_TIMESTEPS = 96
TIMESTEP = 900


@pytest.fixture
def accomplice(chain: Chain) -> ChecksumAddress:
    """The buyer's second account, selling to it."""
    return chain.accounts[3]


def pay(price: int, wh: int) -> int:
    return price * wh // 1000


def escrow(price: int, wh: int) -> int:
    return (price * wh + 999) // 1000


def reported_meter(chain: Chain, owner: str, wh: int = BASELINE) -> LocalAccount:
    meter = chain.new_meter(owner)
    chain.settle(chain.sign(meter, wh, chain.now()))
    return meter


def reading_at(chain: Chain, meter: LocalAccount, wh: int) -> tuple[SignedReading, int]:
    t = chain.now() + 10
    return chain.sign(meter, wh, t), t


# ------------------------------------------------------------------ F4: bounded work per reading


def test_a_meter_holds_at_most_eight_connections(chain: Chain, buyer: str, accomplice: str, seller: str) -> None:
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    assert m.MAX_METER_CONNECTIONS().call() == MAX_QUEUE
    for _ in range(MAX_QUEUE):
        chain.award(accomplice, buyer, meter.address, 1, 1)
    real = chain.create_offer(seller, 2000, PRICE)
    assert chain.reverts(m.bid(real, PRICE, meter.address), buyer, chain.escrow_for(real, PRICE)) == (
        "MeterQueueFull",
        (meter.address, MAX_QUEUE),
    )
    # Another meter of the same buyer has its own queue.
    other = reported_meter(chain, buyer)
    chain.place_bid(real, buyer, other.address, PRICE)
    chain.assert_conserved()


def test_bids_placed_before_the_queue_filled_are_refused_at_the_award(
    chain: Chain, buyer: str, accomplice: str
) -> None:
    """Bids on many offers at once all pass the bid-time check; the award refuses the ones that
    would overfill the queue and returns their escrow as credit."""
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    offers = [chain.create_offer(accomplice, 1, 1) for _ in range(MAX_QUEUE + 2)]
    for offer in offers:
        chain.place_bid(offer, buyer, meter.address, 1)
    chain.travel(600)
    refused = []
    for offer in offers:
        receipt = chain.tx(m.finalize(offer), chain.accounts[-1])
        refused += chain.events(receipt, "AwardRefused")
    assert refused == [
        {"id": offer, "bidder": buyer, "meter": meter.address, "refundWei": 1, "reason": 1}
        for offer in offers[MAX_QUEUE:]
    ]
    assert [STATUS[chain.offer(o)["status"]] for o in offers] == ["Active"] * MAX_QUEUE + ["Expired"] * 2
    assert chain.stored_credit(buyer) == 2
    assert chain.open_ids(accomplice) == offers[:MAX_QUEUE][::-1]
    chain.assert_conserved()


def test_a_real_seller_behind_a_full_queue_of_blockers_is_paid(
    chain: Chain, buyer: str, accomplice: str, seller: str
) -> None:
    """The attack of finding F4, at the largest queue the contract allows: seven 1-Wh blockers
    from the buyer's own second account, closed at once, then the real seller's connection. One
    reading ends all seven and bills the real connection; the buyer cannot release it unpaid."""
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    blockers = [chain.award(accomplice, buyer, meter.address, 1, 1) for _ in range(MAX_QUEUE - 1)]
    real = chain.award(seller, buyer, meter.address, 2000, PRICE)
    for blocker in blockers[1:]:
        chain.tx(m.closeConnection(blocker), buyer)
    reading, t = reading_at(chain, meter, BASELINE + 1500)
    receipt = chain.settle_at(t, reading)
    ended = chain.events(receipt, "ConnectionEnded")
    assert [e["id"] for e in ended] == blockers
    # The first blocker took its 1 Wh; the closed ones nothing; the real connection the rest.
    assert chain.connection(real)["deliveredWh"] == 1499
    assert chain.connection(real)["delivering"]
    # Ending the whole queue in one reading stays far below a block (30M): a constant bound.
    assert receipt["gasUsed"] < 400_000

    chain.tx(m.closeConnection(real), buyer)
    chain.travel(TIMESTEP + 1)
    chain.tx(m.release(real), chain.accounts[-1])
    assert chain.credit(seller) == pay(PRICE, 1499)
    blockers_refund = len(blockers) * escrow(1, 1)  # 1 Wh at 1 wei/kWh pays 0 wei
    assert chain.credit(buyer) == escrow(PRICE, 2000) - pay(PRICE, 1499) + blockers_refund
    chain.assert_conserved()


def test_worst_case_reading_gas_is_bounded(chain: Chain, buyer: str, accomplice: str) -> None:
    """Eight connections ended by one reading, each with its own seller: the dearest reading there
    is. Its gas, measured, bounds what any batch of n readings costs (n times it)."""
    meter = reported_meter(chain, buyer)
    sellers = chain.accounts[4:12]
    connections = [chain.award(s, buyer, meter.address, 1, PRICE) for s in sellers]
    reading, t = reading_at(chain, meter, BASELINE + 100)
    receipt = chain.settle_at(t, reading)
    assert [e["id"] for e in chain.events(receipt, "ConnectionEnded")] == connections
    assert receipt["gasUsed"] < 450_000
    chain.assert_conserved()


# ------------------------------------------------------------------ F5: meter owner changes


@pytest.mark.parametrize("new_owner", [None, 4], ids=["revoked", "registered-to-another-owner"])
def test_a_bid_does_not_survive_its_meters_change_of_owner(
    chain: Chain, buyer: str, seller: str, new_owner: int | None
) -> None:
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    offer = chain.create_offer(seller, 2000, PRICE)
    chain.place_bid(offer, buyer, meter.address, PRICE)
    chain.tx(m.revokeMeter(meter.address), chain.registrar)
    if new_owner is not None:
        chain.tx(m.registerMeter(meter.address, chain.accounts[new_owner]), chain.registrar)
    chain.travel(600)
    receipt = chain.tx(m.finalize(offer), chain.accounts[-1])
    assert chain.events(receipt, "AwardRefused") == [
        {"id": offer, "bidder": buyer, "meter": meter.address, "refundWei": escrow(PRICE, 2000), "reason": 0}
    ]
    assert chain.events(receipt, "OfferExpired") == [{"id": offer}]
    assert chain.events(receipt, "ConnectionOpened") == []
    assert STATUS[chain.offer(offer)["status"]] == "Expired"
    assert chain.meter(meter.address)["fillingConnection"] == 0
    # The new owner's consumption is billed to nobody; the bidder has its whole escrow back.
    reading, t = reading_at(chain, meter, BASELINE + 1000)
    chain.settle_at(t, reading)
    assert chain.stored_credit(buyer) == escrow(PRICE, 2000)
    assert chain.escrow(buyer) == 0
    assert chain.open_ids(seller) == []
    chain.assert_conserved()


def test_a_meter_back_with_its_owner_is_awarded(chain: Chain, buyer: str, seller: str) -> None:
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    offer = chain.create_offer(seller, 2000, PRICE)
    chain.place_bid(offer, buyer, meter.address, PRICE)
    chain.tx(m.revokeMeter(meter.address), chain.registrar)
    chain.tx(m.registerMeter(meter.address, buyer), chain.registrar)
    chain.travel(600)
    receipt = chain.tx(m.finalize(offer), chain.accounts[-1])
    assert chain.events(receipt, "AwardRefused") == []
    assert STATUS[chain.offer(offer)["status"]] == "Active"


# ------------------------------------------------------------------ F6: a seller's credit is never locked


def test_a_never_drawing_buyer_cannot_make_the_sellers_withdraw_dearer(chain: Chain, buyer: str, seller: str) -> None:
    """withdraw pays the stored credit without walking; the seller's reads are paged."""
    m = chain.market.functions
    other_buyer = chain.accounts[5]
    paying_meter = reported_meter(chain, other_buyer)
    paid = chain.award(seller, other_buyer, paying_meter.address, 2000, PRICE)
    reading, t = reading_at(chain, paying_meter, BASELINE + 2000)
    chain.settle_at(t, reading)  # completes: the payment is stored credit
    gas_alone = m.withdraw().estimate_gas({"from": seller})
    for _ in range(3):
        meter = reported_meter(chain, buyer)
        for _ in range(MAX_QUEUE):
            chain.award(seller, buyer, meter.address, 1, PRICE)
    assert len(chain.open_ids(seller)) == 3 * MAX_QUEUE
    assert m.withdraw().estimate_gas({"from": seller}) == gas_alone
    page = m.accountOf(seller, 0, 5).call()
    assert len(page[2]) == 5
    assert page[-1] != 0
    receipt = chain.tx(m.withdraw(), seller)
    assert chain.events(receipt, "Withdrawn") == [{"account": seller, "amountWei": pay(PRICE, 2000)}]
    assert STATUS[chain.connection(paid)["status"]] == "Completed"
    chain.assert_conserved()


def test_the_seller_closes_a_connection_that_delivered_nothing_for_a_day(chain: Chain, buyer: str, seller: str) -> None:
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    head = chain.award(seller, buyer, meter.address, 1000, PRICE)
    queued = chain.award(seller, buyer, meter.address, 1000, PRICE)
    awarded_at = chain.now()
    idle_at = awarded_at + IDLE_TIMESTEPS * TIMESTEP
    assert chain.reverts(m.closeConnection(queued), seller) == ("ConnectionNotIdle", (queued, idle_at))
    chain.set_next_timestamp(idle_at)
    assert chain.reverts(m.closeConnection(queued), seller)[0] == "ConnectionNotIdle"
    chain.travel(1)
    # The head was awarded a block earlier: it is idle too, with nothing delivered.
    for connection in (head, queued):
        receipt = chain.tx(m.closeConnection(connection), seller)
        assert chain.events(receipt, "ConnectionClosed")[0]["buyer"] == buyer
    chain.travel(TIMESTEP + 1)
    for connection in (head, queued):
        chain.tx(m.release(connection), chain.accounts[-1])
    assert chain.open_ids(seller) == []
    assert chain.credit(buyer) == 2 * escrow(PRICE, 1000)
    assert chain.credit(seller) == 0
    chain.assert_conserved()


def test_the_seller_cannot_close_a_connection_that_delivers(chain: Chain, buyer: str, seller: str) -> None:
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    connection = chain.award(seller, buyer, meter.address, 1000, PRICE)
    reading, t = reading_at(chain, meter, BASELINE + 1)
    chain.settle_at(t, reading)
    chain.travel(IDLE_TIMESTEPS * TIMESTEP + 1)
    assert chain.reverts(m.closeConnection(connection), seller)[0] == "ConnectionNotIdle"
    assert chain.reverts(m.closeConnection(connection), chain.accounts[9]) == ("NotBuyer", (connection,))
    chain.tx(m.closeConnection(connection), buyer)


# ------------------------------------------------------------------ F7: one reading, one encoding


@pytest.mark.parametrize("bit", [88, 95])
def test_uncovered_bits_make_a_reading_malformed(chain: Chain, buyer: str, seller: str, bit: int) -> None:
    meter = reported_meter(chain, buyer)
    connection = chain.award(seller, buyer, meter.address, 5000, PRICE)
    reading, t = reading_at(chain, meter, BASELINE + 700)
    word, r, vs = reading.as_tuple()
    chain.set_next_timestamp(t)
    receipt = chain.tx(chain.market.functions.settle([(word | 1 << bit, r, vs)]), chain.accounts[-1])
    assert [SKIP[e["reason"]] for e in chain.events(receipt, "ReadingSkipped")] == ["Malformed"]
    assert chain.connection(connection)["deliveredWh"] == 0
    chain.settle(reading)  # the one true encoding is accepted
    assert chain.connection(connection)["deliveredWh"] == 700


# ------------------------------------------------------------------ F8: open means open for bids


def test_offers_whose_bidding_is_over_are_due_not_open(chain: Chain, seller: str) -> None:
    m = chain.market.functions
    short = chain.create_offer(seller, 1000, PRICE, 100)
    long = chain.create_offer(seller, 1000, PRICE, 1000)
    chain.travel(100)
    assert [o[0] for o in m.openOffers(0, 10).call()[0]] == [long]
    assert [o[0] for o in m.dueOffers(0, 10).call()[0]] == [short]
    assert m.unfinalizedOfferCount().call() == 2
    # Pages count the offers looked at: a page may be empty while more follow.
    assert m.openOffers(0, 1).call() == [[], short]
    assert [o[0] for o in m.openOffers(short, 1).call()[0]] == [long]
    chain.tx(m.finalize(short), chain.accounts[-1])
    assert m.dueOffers(0, 10).call() == [[], 0]


# ------------------------------------------------------------------ F9: times past 2106


@pytest.mark.parametrize("mode", MODES)
def test_bidding_ends_past_2106(mode: str) -> None:
    start = 2**32 - 300  # five minutes before a 32-bit timestamp wraps
    with Anvil(accounts=3, extra_args=("--timestamp", str(start))) as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        chain = Chain.deploy(w3, deploy_token(w3, w3.eth.accounts[0]) if mode == ERC20 else None)
        seller, buyer = chain.accounts[1:3]
        meter = reported_meter(chain, buyer)
        offer = chain.create_offer(seller, 1000, PRICE, 3600)
        ends = chain.offer(offer)["biddingEnds"]
        assert ends > 2**32
        chain.travel(600)  # past the wrap: bidding must still be open
        assert chain.now() > 2**32
        chain.place_bid(offer, buyer, meter.address, PRICE)
        chain.travel(3600)
        chain.tx(chain.market.functions.finalize(offer), seller)
        assert STATUS[chain.offer(offer)["status"]] == "Active"
        chain.assert_conserved()


# ------------------------------------------------------------------ F10: currency sent from outside belongs to nobody


def force_ether(chain: Chain, amount: int) -> None:
    """Force Ether into the market, which has no receive(): init code that self-destructs at once,
    sending its value to the market (PUSH20 market, SELFDESTRUCT)."""
    init = "0x73" + chain.market.address[2:].lower() + "ff"
    tx = chain.w3.eth.send_transaction({"from": chain.accounts[9], "data": HexStr(init), "value": Wei(amount)})
    assert chain.w3.eth.wait_for_transaction_receipt(tx)["status"] == 1


def transfer_tokens(chain: Chain, amount: int) -> None:
    """Transfer tokens straight to the market, past its functions: nothing records them."""
    assert chain.token is not None
    chain.fund(chain.accounts[9], amount)
    chain.tx(chain.token.functions.transfer(chain.market.address, amount), chain.accounts[9])


def assert_surplus_is_nobodys(chain: Chain, buyer: str, seller: str, send: Callable[[Chain, int], None]) -> None:
    m = chain.market.functions
    meter = reported_meter(chain, buyer)
    connection = chain.award(seller, buyer, meter.address, 2000, PRICE)
    reading, t = reading_at(chain, meter, BASELINE + 500)
    chain.settle_at(t, reading)
    surplus = 12345
    send(chain, surplus)
    assert chain.balance() == chain.held() + surplus
    chain.assert_conserved(surplus=surplus)

    chain.tx(m.closeConnection(connection), buyer)
    chain.travel(TIMESTEP + 1)
    chain.tx(m.release(connection), chain.accounts[-1])
    for account, owed in ((seller, pay(PRICE, 500)), (buyer, escrow(PRICE, 2000) - pay(PRICE, 500))):
        before = chain.funds(account)
        receipt = chain.withdraw_all(account)
        assert chain.funds(account) - before + chain.fee(receipt) == owed  # exactly its own, no share of the surplus
    assert chain.held() == 0
    assert chain.balance() == surplus  # nobody's: no account can withdraw it
    for account in (seller, buyer, chain.accounts[9]):
        assert chain.reverts(m.withdraw(), account) == ("NothingToWithdraw", ())


@only(NATIVE)
def test_forced_ether_is_surplus_and_everyone_still_withdraws_exactly(chain: Chain, buyer: str, seller: str) -> None:
    assert_surplus_is_nobodys(chain, buyer, seller, force_ether)


@only(ERC20)
def test_tokens_sent_straight_to_the_market_are_surplus_and_everyone_still_withdraws_exactly(
    chain: Chain, buyer: str, seller: str
) -> None:
    """F10 in a token market: a plain `transfer` to the market, which it cannot refuse."""
    assert_surplus_is_nobodys(chain, buyer, seller, transfer_tokens)


@only(ERC20)
def test_ether_forced_into_a_token_market_is_not_its_currency(chain: Chain, buyer: str, seller: str) -> None:
    """Ether forced into a token market changes nothing the market counts: its currency is the token."""
    force_ether(chain, 777)
    assert chain.w3.eth.get_balance(chain.market.address) == 777
    assert chain.balance() == 0
    assert_surplus_is_nobodys(chain, buyer, seller, transfer_tokens)
