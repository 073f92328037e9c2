"""Closing a connection, the grace window (one timestep), and releasing the rest of the escrow."""

from __future__ import annotations

import pytest
from eth_account.signers.local import LocalAccount

from tests.chain import SKIP, STATUS, Chain

PRICE = 10**12 + 7  # wei per kWh
CAP = 4999
BASELINE = 1000
GRACE = 900  # the fixture's timestep


def pay(price: int, wh: int) -> int:
    return price * wh // 1000


def escrow(price: int, wh: int) -> int:
    return (price * wh + 999) // 1000


@pytest.fixture
def connection(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> int:
    """An Active connection of CAP Wh at PRICE; the meter has delivered 500 Wh on it."""
    connection = chain.award(seller, buyer, meter.address, CAP, PRICE)
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, BASELINE + 500, t))
    return connection


def close_at(chain: Chain, connection: int, buyer: str) -> int:
    """Close `connection` 100 s from now; the close time."""
    closed_at = chain.now() + 100
    chain.tx_at(closed_at, chain.market.functions.closeConnection(connection), buyer)
    return closed_at


def assert_released(chain: Chain, connection: int, seller: str, buyer: str, delivered: int) -> None:
    view = chain.connection(connection)
    assert (STATUS[view["status"]], view["deliveredWh"], view["paidWei"], view["escrowWei"]) == (
        "Released",
        delivered,
        pay(PRICE, delivered),
        0,
    )
    assert view["delivering"] is False
    assert chain.credit(seller) == pay(PRICE, delivered)
    assert chain.credit(buyer) == escrow(PRICE, CAP) - pay(PRICE, delivered)
    assert chain.escrow(buyer) == 0
    assert chain.open_ids(buyer) == []
    assert chain.open_ids(seller) == []
    chain.assert_conserved()


def test_only_the_buyer_closes(chain: Chain, connection: int, seller: str, buyer: str) -> None:
    m = chain.market.functions
    for other in (chain.accounts[3], chain.registrar):
        assert chain.reverts(m.closeConnection(connection), other) == ("NotBuyer", (connection,))
    name, (_, idle_at) = chain.reverts(m.closeConnection(connection), seller)  # see test_seller_closes_*
    assert (name, idle_at - chain.now()) > ("ConnectionNotIdle", 95 * 900)
    assert STATUS[chain.connection(connection)["status"]] == "Active"
    offer_id = chain.create_offer(seller, 100, PRICE)
    assert chain.reverts(m.closeConnection(offer_id), buyer) == ("NotBuyer", (offer_id,))
    assert chain.reverts(m.closeConnection(77), buyer) == ("UnknownOffer", (77,))

    closed_at = chain.now() + 100
    receipt = chain.tx_at(closed_at, m.closeConnection(connection), buyer)
    assert chain.events(receipt, "ConnectionClosed") == [{"id": connection, "buyer": buyer, "closedAt": closed_at}]
    view = chain.connection(connection)
    assert (STATUS[view["status"]], view["closedAt"], view["deliveredWh"], view["delivering"]) == (
        "Closed",
        closed_at,
        500,
        True,
    )
    assert chain.open_ids(buyer) == [connection]
    assert chain.reverts(m.closeConnection(connection), buyer) == (
        "WrongStatus",
        (connection, STATUS.index("Closed")),
    )
    chain.assert_conserved()


def test_readings_up_to_the_close_settle_in_grace(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    m = chain.market.functions
    assert m.timestep().call() == GRACE
    closed_at = close_at(chain, connection, buyer)
    # Taken at the close, relayed in the last second of the grace window: billed.
    receipt = chain.settle_at(closed_at + GRACE, chain.sign(meter, BASELINE + 1200, closed_at))
    assert [SKIP[e["reason"]] for e in chain.events(receipt, "ReadingSkipped")] == []
    assert chain.events(receipt, "ConnectionEnded") == []
    view = chain.connection(connection)
    assert (STATUS[view["status"]], view["deliveredWh"]) == ("Closed", 1200)
    assert chain.credit(seller) == pay(PRICE, 1200)
    chain.assert_conserved()

    chain.set_next_timestamp(closed_at + GRACE)
    assert chain.reverts(m.release(connection), chain.accounts[9]) == ("GraceNotOver", (connection, closed_at + GRACE))
    receipt = chain.tx_at(closed_at + GRACE + 1, m.release(connection), chain.accounts[9])  # anyone may release
    paid = pay(PRICE, 1200)
    assert chain.events(receipt, "ConnectionEnded") == [
        {
            "id": connection,
            "deliveredWh": 1200,
            "paidWei": paid,
            "refundWei": escrow(PRICE, CAP) - paid,
            "completed": False,
        }
    ]
    assert_released(chain, connection, seller, buyer, 1200)
    # The head's close time was kept in its meter's state; the ended record has it.
    assert chain.connection(connection)["closedAt"] == closed_at
    assert chain.reverts(m.release(connection), buyer) == ("WrongStatus", (connection, STATUS.index("Released")))
    assert chain.reverts(m.claim(connection), seller) == ("WrongStatus", (connection, STATUS.index("Released")))


def test_release_before_grace_and_of_open_connection(chain: Chain, connection: int, seller: str, buyer: str) -> None:
    m = chain.market.functions
    assert chain.reverts(m.release(connection), buyer) == ("WrongStatus", (connection, STATUS.index("Active")))
    assert chain.reverts(m.release(55), buyer) == ("UnknownOffer", (55,))
    closed_at = close_at(chain, connection, buyer)
    chain.set_next_timestamp(closed_at + 1)
    assert chain.reverts(m.release(connection), buyer) == ("GraceNotOver", (connection, closed_at + GRACE))
    assert STATUS[chain.connection(connection)["status"]] == "Closed"
    chain.tx_at(closed_at + GRACE + 1, m.release(connection), seller)
    assert_released(chain, connection, seller, buyer, 500)


def test_reading_after_the_close_is_not_billed(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    m = chain.market.functions
    closed_at = close_at(chain, connection, buyer)
    receipt = chain.settle_at(closed_at + 5, chain.sign(meter, BASELINE + 2500, closed_at + 1))
    # The reading is accepted (the meter moves on) but its energy was drawn after the close: the
    # connection ends at what was delivered before.
    assert len(chain.events(receipt, "ReadingsAccepted")) == 1
    assert chain.events(receipt, "ConnectionEnded")[0]["deliveredWh"] == 500
    assert chain.meter(meter.address)["lastWh"] == BASELINE + 2500
    assert_released(chain, connection, seller, buyer, 500)
    chain.set_next_timestamp(closed_at + GRACE + 1)
    assert chain.reverts(m.release(connection), buyer) == ("WrongStatus", (connection, STATUS.index("Released")))


def test_late_reading_after_grace_is_not_billed(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    closed_at = close_at(chain, connection, buyer)
    late = chain.sign(meter, BASELINE + 3000, closed_at)  # taken at the close...
    receipt = chain.settle_at(closed_at + GRACE + 1, late)  # ...relayed after the grace window
    assert len(chain.events(receipt, "ReadingsAccepted")) == 1
    assert chain.events(receipt, "ConnectionEnded")[0]["deliveredWh"] == 500
    assert_released(chain, connection, seller, buyer, 500)


def test_cap_reached_before_the_close_completes(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    """Nobody escapes paying for energy metered before the close, up to the cap."""
    closed_at = close_at(chain, connection, buyer)
    receipt = chain.settle_at(closed_at + 60, chain.sign(meter, BASELINE + CAP + 800, closed_at - 1))
    assert chain.events(receipt, "ConnectionEnded")[0]["completed"] is True
    assert STATUS[chain.connection(connection)["status"]] == "Completed"
    assert chain.credit(seller) == pay(PRICE, CAP)
    assert chain.credit(buyer) == escrow(PRICE, CAP) - pay(PRICE, CAP)
    chain.assert_conserved()


def test_close_and_release_on_revoked_meter(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    chain.tx(chain.market.functions.revokeMeter(meter.address), chain.registrar)
    closed_at = close_at(chain, connection, buyer)
    chain.tx_at(closed_at + GRACE + 1, chain.market.functions.release(connection), buyer)
    assert_released(chain, connection, seller, buyer, 500)


def test_release_hands_the_meter_to_the_next_connection(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    next_seller = chain.accounts[6]
    following = chain.award(next_seller, buyer, meter.address, 1000, PRICE)
    assert chain.connection(following)["delivering"] is False
    closed_at = close_at(chain, connection, buyer)
    chain.tx_at(closed_at + GRACE + 1, chain.market.functions.release(connection), buyer)
    assert chain.connection(following)["delivering"] is True
    assert chain.meter(meter.address)["fillingConnection"] == following
    t = closed_at + GRACE + 10
    chain.settle_at(t, chain.sign(meter, BASELINE + 700, t))
    assert chain.connection(following)["deliveredWh"] == 200  # from the last reading (1500), not the baseline
    assert chain.credit(seller) == pay(PRICE, 500)
    assert chain.credit(next_seller) == pay(PRICE, 200)
    chain.assert_conserved()


def test_release_queued_closed_connections(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    m = chain.market.functions
    s2, s3, s4 = chain.accounts[6], chain.accounts[7], chain.accounts[8]
    middle = chain.award(s2, buyer, meter.address, 2000, PRICE)
    tail = chain.award(s3, buyer, meter.address, 300, PRICE)

    # Close and release the middle of the queue: it never delivered, the whole escrow comes back.
    closed_at = close_at(chain, middle, buyer)
    view = chain.connection(middle)
    assert (STATUS[view["status"]], view["delivering"], view["closedAt"]) == ("Closed", False, closed_at)
    receipt = chain.tx_at(closed_at + GRACE + 1, m.release(middle), s2)
    assert chain.events(receipt, "ConnectionEnded") == [
        {"id": middle, "deliveredWh": 0, "paidWei": 0, "refundWei": escrow(PRICE, 2000), "completed": False}
    ]
    assert STATUS[chain.connection(middle)["status"]] == "Released"
    assert chain.credit(buyer) == escrow(PRICE, 2000)
    assert chain.credit(s2) == 0
    assert chain.open_ids(buyer) == [tail, connection]
    assert chain.open_ids(s2) == []
    chain.assert_conserved()

    # Close and release the tail too; a new connection then queues behind the head.
    closed_at = close_at(chain, tail, buyer)
    chain.tx_at(closed_at + GRACE + 1, m.release(tail), s3)
    newest = chain.award(s4, buyer, meter.address, 400, PRICE)
    assert chain.open_ids(buyer) == [newest, connection]

    # The head's excess skips the released connections and reaches the newest one.
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, BASELINE + CAP + 150, t))
    assert STATUS[chain.connection(connection)["status"]] == "Completed"
    assert [chain.connection(c)["deliveredWh"] for c in (middle, tail, newest)] == [0, 0, 150]
    assert chain.meter(meter.address)["fillingConnection"] == newest
    assert (chain.credit(s2), chain.credit(s3), chain.credit(s4)) == (0, 0, pay(PRICE, 150))
    assert chain.credit(seller) == pay(PRICE, CAP)
    chain.assert_conserved()


def test_closed_queued_connection_takes_energy_metered_before_its_close(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    m = chain.market.functions
    second_seller = chain.accounts[6]
    queued = chain.award(second_seller, buyer, meter.address, 2000, PRICE)
    closed_at = close_at(chain, queued, buyer)
    # Taken before the queued connection's close, it fills the head and then the closed one.
    chain.settle_at(closed_at + 60, chain.sign(meter, BASELINE + CAP + 300, closed_at - 1))
    assert STATUS[chain.connection(connection)["status"]] == "Completed"
    view = chain.connection(queued)
    assert (STATUS[view["status"]], view["deliveredWh"], view["delivering"]) == ("Closed", 300, True)
    # Taken after its close: not billed, and it ends the connection at once.
    receipt = chain.settle_at(closed_at + 120, chain.sign(meter, BASELINE + CAP + 900, closed_at + 1))
    assert chain.events(receipt, "ConnectionEnded")[0]["id"] == queued
    view = chain.connection(queued)
    assert (STATUS[view["status"]], view["deliveredWh"]) == ("Released", 300)
    assert chain.credit(second_seller) == pay(PRICE, 300)
    assert chain.credit(seller) == pay(PRICE, CAP)
    assert chain.credit(buyer) == (escrow(PRICE, CAP) - pay(PRICE, CAP)) + (escrow(PRICE, 2000) - pay(PRICE, 300))
    assert chain.escrow(buyer) == 0
    chain.set_next_timestamp(closed_at + GRACE + 1)
    assert chain.reverts(m.release(queued), buyer) == ("WrongStatus", (queued, STATUS.index("Released")))
    chain.assert_conserved()


def test_late_reading_is_not_billed_to_a_later_connection(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    """A reading taken at the close and relayed after the grace window is billed to nobody: not to
    the closed connection, and not to a connection awarded after it was taken."""
    closed_at = close_at(chain, connection, buyer)
    later_seller = chain.accounts[6]
    later = chain.award(later_seller, buyer, meter.address, 2000, PRICE)  # awarded after the close
    late = chain.sign(meter, BASELINE + 1500, closed_at)  # 1000 Wh drawn before the close
    chain.settle_at(chain.now() + GRACE + 1, late)
    assert STATUS[chain.connection(connection)["status"]] == "Released"
    assert chain.connection(connection)["deliveredWh"] == 500
    assert chain.connection(later)["deliveredWh"] == 0
    assert chain.credit(later_seller) == 0
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, BASELINE + 1800, t))
    assert chain.connection(later)["deliveredWh"] == 300
    chain.assert_conserved()


def test_a_closed_connection_completed_in_grace_keeps_its_close_time(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    closed_at = close_at(chain, connection, buyer)
    receipt = chain.settle_at(closed_at + 10, chain.sign(meter, BASELINE + CAP, closed_at))
    assert chain.events(receipt, "ConnectionEnded")[0]["completed"] is True
    view = chain.connection(connection)
    assert (STATUS[view["status"]], view["closedAt"], view["deliveredWh"]) == ("Completed", closed_at, CAP)
    chain.assert_conserved()


def test_a_queued_connection_closed_before_its_turn_keeps_its_close_time(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    m = chain.market.functions
    queued = chain.award(seller, buyer, meter.address, 300, PRICE)
    assert chain.connection(queued)["delivering"] is False
    closed_head = close_at(chain, connection, buyer)
    closed_queued = close_at(chain, queued, buyer)
    assert [chain.connection(c)["closedAt"] for c in (connection, queued)] == [closed_head, closed_queued]
    chain.tx_at(closed_head + GRACE + 1, m.release(connection), seller)
    # The queued one is the head now: its close time moved into the meter's state, and it counts.
    view = chain.connection(queued)
    assert (STATUS[view["status"]], view["closedAt"], view["delivering"]) == ("Closed", closed_queued, True)
    assert chain.reverts(m.release(queued), seller) == ("GraceNotOver", (queued, closed_queued + GRACE))
    chain.tx_at(closed_queued + GRACE + 1, m.release(queued), seller)
    assert [STATUS[chain.connection(c)["status"]] for c in (connection, queued)] == ["Released", "Released"]
    assert [chain.connection(c)["closedAt"] for c in (connection, queued)] == [closed_head, closed_queued]
    chain.assert_conserved()
