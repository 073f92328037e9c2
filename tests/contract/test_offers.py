"""Offer rules: creating, cancelling, finalizing (award or expiry), and the offer views."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from tests.chain import STATUS, Chain

ZERO = "0x0000000000000000000000000000000000000000"
DAY = 86_400
MAX_BIDDING = 30 * DAY
PRICE = 10**12  # wei per kWh


def test_create_offer(chain: Chain, seller: str) -> None:
    m = chain.market.functions
    t = chain.now() + 5
    receipt = chain.tx_at(t, m.createOffer(5000, PRICE, 600), seller)
    assert chain.events(receipt, "OfferCreated") == [
        {"id": 1, "seller": seller, "energyWh": 5000, "startPricePerKWh": PRICE, "biddingEnds": t + 600}
    ]
    assert chain.offer(1) == {
        "id": 1,
        "seller": seller,
        "energyWh": 5000,
        "startPricePerKWh": PRICE,
        "highestPricePerKWh": 0,
        "highestBidder": ZERO,
        "biddingEnds": t + 600,
        "minNextBidPerKWh": PRICE,
        "status": 0,
    }
    assert STATUS[chain.offer(1)["status"]] == "Bidding"
    assert m.lastOfferId().call() == 1
    assert m.unfinalizedOfferCount().call() == 1
    assert chain.open_ids(seller) == [1]
    assert m.minNextBid(1).call() == PRICE
    assert chain.balance() == 0


@pytest.mark.parametrize(
    ("energy", "price", "seconds", "error"),
    [
        (0, PRICE, 600, ("InvalidEnergy", (0,))),
        (2**24, PRICE, 600, ("InvalidEnergy", (2**24,))),
        (5000, 0, 600, ("InvalidPrice", (0,))),
        (5000, 2**72, 600, ("InvalidPrice", (2**72,))),
        (5000, PRICE, 0, ("InvalidBiddingTime", (0, MAX_BIDDING))),
        (5000, PRICE, MAX_BIDDING + 1, ("InvalidBiddingTime", (MAX_BIDDING + 1, MAX_BIDDING))),
    ],
    ids=["zero-energy", "energy-over-uint24", "zero-price", "price-over-uint72", "no-bidding-time", "over-30-days"],
)
def test_create_offer_validation(
    chain: Chain, seller: str, energy: int, price: int, seconds: int, error: tuple[str, Any]
) -> None:
    assert chain.reverts(chain.market.functions.createOffer(energy, price, seconds), seller) == error
    assert chain.market.functions.lastOfferId().call() == 0
    assert chain.market.functions.unfinalizedOfferCount().call() == 0


def test_create_offer_limits_are_inclusive(chain: Chain, seller: str) -> None:
    m = chain.market.functions
    t = chain.now() + 5
    receipt = chain.tx_at(t, m.createOffer(2**24 - 1, 2**72 - 1, MAX_BIDDING), seller)
    assert chain.events(receipt, "OfferCreated")[0]["biddingEnds"] == t + MAX_BIDDING
    chain.tx(m.createOffer(1, 1, 1), seller)
    assert m.unfinalizedOfferCount().call() == 2
    assert m.MAX_BIDDING_SECONDS().call() == MAX_BIDDING


def test_cancel_offer_by_seller(chain: Chain, seller: str) -> None:
    m = chain.market.functions
    first = chain.create_offer(seller, 1000, PRICE)
    second = chain.create_offer(seller, 2000, PRICE)
    receipt = chain.tx(m.cancelOffer(first), seller)
    assert chain.events(receipt, "OfferCancelled") == [{"id": first}]
    assert STATUS[chain.offer(first)["status"]] == "Cancelled"
    assert m.unfinalizedOfferCount().call() == 1
    assert chain.open_ids(seller) == [second]
    page, _ = m.openOffers(0, 10).call()
    assert [o[0] for o in page] == [second]
    assert chain.reverts(m.cancelOffer(first), seller) == ("WrongStatus", (first, STATUS.index("Cancelled")))
    assert chain.reverts(m.bid(first, PRICE, ZERO), chain.accounts[2], 10**9) == (
        "WrongStatus",
        (first, STATUS.index("Cancelled")),
    )


def test_cancel_offer_only_by_seller(chain: Chain, seller: str) -> None:
    m = chain.market.functions
    offer_id = chain.create_offer(seller, 1000, PRICE)
    other = chain.accounts[3]
    assert chain.reverts(m.cancelOffer(offer_id), other) == ("NotSeller", (offer_id,))
    assert chain.reverts(m.cancelOffer(offer_id), chain.registrar) == ("NotSeller", (offer_id,))
    assert STATUS[chain.offer(offer_id)["status"]] == "Bidding"
    assert chain.reverts(m.cancelOffer(99), seller) == ("UnknownOffer", (99,))


def test_cancel_offer_refused_once_bid(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    offer_id = chain.create_offer(seller, 1000, PRICE)
    chain.place_bid(offer_id, buyer, meter.address, PRICE)
    assert chain.reverts(m.cancelOffer(offer_id), seller) == ("OfferHasBids", (offer_id,))
    assert chain.offer(offer_id)["highestBidder"] == buyer
    assert chain.escrow(buyer) == chain.escrow_for(offer_id, PRICE)
    chain.assert_conserved()


def test_cancel_refused_after_expiry(chain: Chain, seller: str) -> None:
    m = chain.market.functions
    offer_id = chain.create_offer(seller, 1000, PRICE, 60)
    chain.travel(61)
    chain.tx(m.finalize(offer_id), seller)
    assert chain.reverts(m.cancelOffer(offer_id), seller) == ("WrongStatus", (offer_id, STATUS.index("Expired")))


def test_finalize_before_bidding_ends(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    t = chain.now() + 5
    chain.tx_at(t, m.createOffer(1000, PRICE, 600), seller)
    chain.tx_at(t + 598, m.bid(1, PRICE, meter.address), buyer, chain.escrow_for(1, PRICE))
    chain.set_next_timestamp(t + 599)
    assert chain.reverts(m.finalize(1), chain.accounts[9]) == ("BiddingNotOver", (1, t + 600))
    assert STATUS[chain.offer(1)["status"]] == "Bidding"
    receipt = chain.tx_at(t + 600, m.finalize(1), chain.accounts[9])
    assert len(chain.events(receipt, "ConnectionOpened")) == 1


def test_finalize_without_bids_expires(chain: Chain, seller: str) -> None:
    m = chain.market.functions
    offer_id = chain.create_offer(seller, 1000, PRICE, 60)
    chain.travel(61)
    receipt = chain.tx(m.finalize(offer_id), chain.accounts[7])
    assert chain.events(receipt, "OfferExpired") == [{"id": offer_id}]
    assert chain.events(receipt, "ConnectionOpened") == []
    assert STATUS[chain.offer(offer_id)["status"]] == "Expired"
    assert m.unfinalizedOfferCount().call() == 0
    assert chain.open_ids(seller) == []
    assert chain.reverts(m.finalize(offer_id), seller) == ("WrongStatus", (offer_id, STATUS.index("Expired")))
    assert chain.reverts(m.getConnection(offer_id), seller) == ("WrongStatus", (offer_id, STATUS.index("Expired")))
    assert chain.reverts(m.finalize(42), seller) == ("UnknownOffer", (42,))


def test_finalize_with_bids_opens_connection(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    loser = chain.accounts[3]
    loser_meter = chain.new_meter(loser)
    chain.settle(chain.sign(loser_meter, 50, chain.now()))
    offer_id = chain.create_offer(seller, 5000, PRICE)
    chain.place_bid(offer_id, loser, loser_meter.address, PRICE)
    price = PRICE + 10**9 + 7
    chain.place_bid(offer_id, buyer, meter.address, price)
    escrow = (price * 5000 + 999) // 1000
    assert chain.reverts(m.getConnection(offer_id), seller) == ("WrongStatus", (offer_id, STATUS.index("Bidding")))
    chain.travel(600)
    receipt = chain.tx(m.finalize(offer_id), chain.accounts[9])  # anyone may finalize
    assert chain.events(receipt, "ConnectionOpened") == [
        {
            "id": offer_id,
            "seller": seller,
            "buyer": buyer,
            "meter": meter.address,
            "pricePerKWh": price,
            "capWh": 5000,
            "baselineWh": 1000,
        }
    ]
    assert chain.connection(offer_id) == {
        "id": offer_id,
        "seller": seller,
        "buyer": buyer,
        "meter": meter.address,
        "pricePerKWh": price,
        "capWh": 5000,
        "deliveredWh": 0,
        "escrowWei": escrow,
        "paidWei": 0,
        "closedAt": 0,
        "status": STATUS.index("Active"),
        "delivering": True,
    }
    assert chain.meter(meter.address)["fillingConnection"] == offer_id
    assert m.unfinalizedOfferCount().call() == 0
    assert chain.open_ids(seller) == [offer_id]
    assert chain.open_ids(buyer) == [offer_id]
    assert chain.open_ids(loser) == []
    assert chain.escrow(buyer) == escrow
    assert chain.credit(loser) == chain.escrow_for(offer_id, PRICE)
    assert chain.credit(seller) == 0
    chain.assert_conserved()
    assert chain.reverts(m.finalize(offer_id), seller) == ("WrongStatus", (offer_id, STATUS.index("Active")))
    assert chain.reverts(m.cancelOffer(offer_id), seller) == ("WrongStatus", (offer_id, STATUS.index("Active")))


def test_baseline_is_the_last_reading_at_award(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    """Energy the meter drew between the bid and the award is not billed to the connection."""
    m = chain.market.functions
    offer_id = chain.create_offer(seller, 5000, PRICE)
    chain.place_bid(offer_id, buyer, meter.address, PRICE)
    t = chain.now()
    chain.settle_at(t + 10, chain.sign(meter, 4000, t + 10))
    chain.travel(600)
    receipt = chain.tx(m.finalize(offer_id), seller)
    assert chain.events(receipt, "ConnectionOpened")[0]["baselineWh"] == 4000
    t = chain.now()
    chain.settle_at(t + 10, chain.sign(meter, 5500, t + 10))
    connection = chain.connection(offer_id)
    assert connection["deliveredWh"] == 1500
    assert connection["paidWei"] == 1500 * PRICE // 1000
    assert chain.credit(seller) == 1500 * PRICE // 1000
    chain.assert_conserved()


def test_offer_views(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    offer_id = chain.create_offer(seller, 333, PRICE + 1)
    # escrow = ceil(price * energy / 1000)
    assert m.escrowFor(offer_id, PRICE + 1).call() == ((PRICE + 1) * 333 + 999) // 1000
    assert m.escrowFor(offer_id, 1000).call() == 333
    assert m.escrowFor(offer_id, 1001).call() == 334
    chain.place_bid(offer_id, buyer, meter.address, PRICE + 5)
    view = chain.offer(offer_id)
    assert (view["highestPricePerKWh"], view["highestBidder"], view["minNextBidPerKWh"]) == (
        PRICE + 5,
        buyer,
        PRICE + 5 + 10**9,
    )
    assert m.minNextBid(offer_id).call() == PRICE + 5 + 10**9
    assert chain.reverts(m.getOffer(7), seller) == ("UnknownOffer", (7,))
    assert chain.reverts(m.escrowFor(7, PRICE), seller) == ("UnknownOffer", (7,))
    assert chain.reverts(m.minNextBid(7), seller) == ("UnknownOffer", (7,))
    assert chain.reverts(m.getConnection(7), seller) == ("UnknownOffer", (7,))


def _ids(page: list[Any]) -> list[int]:
    return [int(o[0]) for o in page]


def test_open_offers_paging(chain: Chain, seller: str) -> None:
    m = chain.market.functions
    other = chain.accounts[4]
    ids = [chain.create_offer(seller if i % 2 else other, 1000 + i, PRICE, 600 + i) for i in range(7)]
    assert ids == list(range(1, 8))
    assert m.lastOfferId().call() == 7
    assert m.unfinalizedOfferCount().call() == 7

    page, next_after = m.openOffers(0, 3).call()
    assert (_ids(page), next_after) == ([1, 2, 3], 3)
    page, next_after = m.openOffers(next_after, 3).call()
    assert (_ids(page), next_after) == ([4, 5, 6], 6)
    page, next_after = m.openOffers(next_after, 3).call()
    assert (_ids(page), next_after) == ([7], 0)
    page, next_after = m.openOffers(0, 100).call()
    assert (_ids(page), next_after) == ([1, 2, 3, 4, 5, 6, 7], 0)
    page, next_after = m.openOffers(4, 3).call()  # an exact last page has no next page
    assert (_ids(page), next_after) == ([5, 6, 7], 0)
    page, next_after = m.openOffers(0, 0).call()
    assert (_ids(page), next_after) == ([], 0)
    assert tuple(m.openOffers(0, 1).call()[0][0]) == tuple(m.getOffer(1).call())

    # Cancelled and finalized offers leave the list, which stays in creation order.
    chain.tx(m.cancelOffer(2), seller)
    chain.tx(m.cancelOffer(7), other)
    chain.tx(m.cancelOffer(1), other)
    assert m.unfinalizedOfferCount().call() == 4
    page, next_after = m.openOffers(0, 2).call()
    assert (_ids(page), next_after) == ([3, 4], 4)
    page, next_after = m.openOffers(next_after, 2).call()
    assert (_ids(page), next_after) == ([5, 6], 0)
    assert chain.reverts(m.openOffers(2, 2), seller) == ("WrongStatus", (2, STATUS.index("Cancelled")))
    assert chain.reverts(m.openOffers(70, 2), seller) == ("UnknownOffer", (70,))
    assert chain.open_ids(seller) == [6, 4]  # newest first
    assert chain.open_ids(other) == [5, 3]
    new_id = chain.create_offer(seller, 10, PRICE)
    assert new_id == 8
    assert _ids(m.openOffers(5, 10).call()[0]) == [6, 8]
    assert chain.open_ids(seller) == [8, 6, 4]
