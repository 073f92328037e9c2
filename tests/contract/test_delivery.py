"""Delivery rules: which signed readings settle, and how their energy is billed to connections."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from devchain.deploy import deploy_market
from oracle.readings import Domain, SignedReading
from tests.chain import SKIP, STATUS, Chain

PRICE = 10**12 + 7  # wei per kWh: not a multiple of 1000, so rounding shows
CAP = 4999  # Wh; with PRICE, the escrow rounds up by one wei
BASELINE = 1000
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def pay(price: int, wh: int) -> int:
    return price * wh // 1000


def escrow(price: int, wh: int) -> int:
    return (price * wh + 999) // 1000


def packed(reading: SignedReading) -> int:
    return reading.as_tuple()[0]


def skipped(chain: Chain, receipt: object) -> list[tuple[str, int, int, str]]:
    return [
        (e["meter"], e["cumulativeWh"], e["timestamp"], SKIP[e["reason"]])
        for e in chain.events(receipt, "ReadingSkipped")  # type: ignore[arg-type]
    ]


def accepted(chain: Chain, receipt: object) -> list[int]:
    events = chain.events(receipt, "ReadingsAccepted")  # type: ignore[arg-type]
    return [w for e in events for w in e["readings"]]


@pytest.fixture
def connection(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> int:
    """An Active connection of CAP Wh at PRICE, from BASELINE Wh on the buyer's meter."""
    return chain.award(seller, buyer, meter.address, CAP, PRICE)


def test_reading_bills_energy_since_baseline(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    m = chain.market.functions
    t = chain.now() + 10
    reading = chain.sign(meter, 2500, t)
    assert m.settle([reading.as_tuple()]).call(block_identifier="pending") == 1
    receipt = chain.settle_at(t, reading)
    assert accepted(chain, receipt) == [packed(reading)]
    assert skipped(chain, receipt) == []
    assert packed(reading) == (int(meter.address, 16) << 96) | (2500 << 40) | t
    assert chain.meter(meter.address) == {
        "owner": buyer,
        "id": 1,
        "registered": True,
        "lastWh": 2500,
        "lastTimestamp": t,
        "fillingConnection": connection,
    }
    paid = pay(PRICE, 1500)
    view = chain.connection(connection)
    assert (view["deliveredWh"], view["paidWei"], view["escrowWei"], STATUS[view["status"]]) == (
        1500,
        paid,
        escrow(PRICE, CAP) - paid,
        "Active",
    )
    assert view["delivering"] is True
    assert chain.credit(seller) == paid
    assert chain.escrow(buyer) == escrow(PRICE, CAP) - paid
    assert chain.credit(buyer) == 0
    chain.assert_conserved()


def test_unchanged_cumulative_is_accepted(chain: Chain, connection: int, meter: LocalAccount) -> None:
    """A meter that drew nothing still reports: same cumulative, later timestamp."""
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, 1800, t))
    receipt = chain.settle_at(t + 900, chain.sign(meter, 1800, t + 900))
    assert skipped(chain, receipt) == []
    assert chain.meter(meter.address)["lastTimestamp"] == t + 900
    assert chain.connection(connection)["deliveredWh"] == 800


def test_bad_signatures_are_skipped(chain: Chain, connection: int, seller: str, meter: LocalAccount) -> None:
    # A second market on the same chain, where the meter is registered too: what is signed for it
    # settles there and nowhere else.
    other_market = deploy_market(
        chain.w3, chain.registrar, timestep=900, min_bid_increment=10**9, currency=chain.currency
    )
    chain.tx(other_market.functions.registerMeter(meter.address, chain.accounts[2]), chain.registrar)
    t = chain.now() + 10
    impostor = Account.create()
    forged = replace(chain.sign(impostor, 4000, t), meter=meter.address)
    tampered = replace(chain.sign(meter, 2000, t), cumulative_wh=4000)
    genuine = chain.sign(meter, 4000, t)
    high_s = replace(
        genuine,
        s=(SECP256K1_N - int.from_bytes(genuine.s, "big")).to_bytes(32, "big"),
        v=55 - genuine.v,  # the malleated signature: same signer, high s
    )
    other_chain = chain.sign(meter, 4000, t, Domain(chain_id=1, contract=chain.market.address))
    other_contract = chain.sign(meter, 4000, t, Domain(chain_id=chain.domain.chain_id, contract=other_market.address))
    chain.set_next_timestamp(t - 1)
    chain.tx(other_market.functions.settle([other_contract.as_tuple()]), chain.accounts[-1])
    assert other_market.functions.meterOf(meter.address).call()[3] == 4000
    receipt = chain.settle_at(t, forged, tampered, high_s, other_chain, other_contract)
    assert skipped(chain, receipt) == [(meter.address, 4000, t, "BadSignature")] * 5
    assert accepted(chain, receipt) == []
    assert chain.meter(meter.address)["lastWh"] == BASELINE
    assert chain.connection(connection)["deliveredWh"] == 0
    assert chain.credit(seller) == 0
    # The genuine reading still settles afterwards: nothing was burnt by the forgeries.
    receipt = chain.settle_at(t + 1, genuine)
    assert accepted(chain, receipt) == [packed(genuine)]
    assert chain.connection(connection)["deliveredWh"] == 3000
    chain.assert_conserved()


def test_replayed_and_older_readings_are_not_newer(
    chain: Chain, connection: int, seller: str, meter: LocalAccount
) -> None:
    t = chain.now() + 10
    first = chain.sign(meter, 3000, t)
    receipt = chain.settle_at(t, first, first)  # the same reading twice in one batch
    assert accepted(chain, receipt) == [packed(first)]
    assert skipped(chain, receipt) == [(meter.address, 3000, t, "NotNewer")]
    receipt = chain.settle_at(t + 10, first)  # and again in a later batch
    assert skipped(chain, receipt) == [(meter.address, 3000, t, "NotNewer")]
    stale = [
        chain.sign(meter, 2999, t + 5),  # cumulative decreased
        chain.sign(meter, 3500, t),  # same timestamp
        chain.sign(meter, 3500, t - 1),  # older timestamp
    ]
    receipt = chain.settle_at(t + 20, *stale)
    assert [s[3] for s in skipped(chain, receipt)] == ["NotNewer"] * 3
    assert accepted(chain, receipt) == []
    assert (chain.meter(meter.address)["lastWh"], chain.meter(meter.address)["lastTimestamp"]) == (3000, t)
    assert chain.connection(connection)["deliveredWh"] == 2000
    assert chain.credit(seller) == pay(PRICE, 2000)
    chain.assert_conserved()


def test_future_timestamp_beyond_clock_skew(chain: Chain, connection: int, meter: LocalAccount) -> None:
    m = chain.market.functions
    assert m.MAX_CLOCK_SKEW().call() == 300
    block = chain.now() + 10
    too_early = chain.sign(meter, 2000, block + 301)
    just_in = chain.sign(meter, 2000, block + 300)
    receipt = chain.settle_at(block, too_early, just_in)
    assert skipped(chain, receipt) == [(meter.address, 2000, block + 301, "FutureTimestamp")]
    assert accepted(chain, receipt) == [packed(just_in)]
    assert chain.meter(meter.address)["lastTimestamp"] == block + 300
    assert chain.connection(connection)["deliveredWh"] == 1000


def test_unknown_and_revoked_meters(chain: Chain, buyer: str) -> None:
    m = chain.market.functions
    t = chain.now() + 10
    stranger = Account.create()
    revoked = chain.new_meter(buyer)
    chain.tx(m.revokeMeter(revoked.address), chain.registrar)
    receipt = chain.settle_at(t, chain.sign(stranger, 500, t), chain.sign(revoked, 700, t))
    assert skipped(chain, receipt) == [
        (stranger.address, 500, t, "UnknownMeter"),
        (revoked.address, 700, t, "UnknownMeter"),
    ]
    assert chain.meter(stranger.address)["lastWh"] == 0
    assert chain.meter(revoked.address)["lastWh"] == 0


def test_revoked_meter_stops_billing(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    m = chain.market.functions
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, 1500, t))
    chain.tx(m.revokeMeter(meter.address), chain.registrar)
    receipt = chain.settle_at(t + 900, chain.sign(meter, 2500, t + 900))
    assert [s[3] for s in skipped(chain, receipt)] == ["UnknownMeter"]
    assert chain.connection(connection)["deliveredWh"] == 500
    assert chain.credit(seller) == pay(PRICE, 500)
    chain.assert_conserved()


def test_one_bad_reading_does_not_block_the_batch(chain: Chain, connection: int, meter: LocalAccount) -> None:
    m = chain.market.functions
    neighbour = chain.accounts[4]
    other = chain.new_meter(neighbour)
    t = chain.now() + 10
    good = chain.sign(meter, 1200, t)
    bad = replace(chain.sign(other, 10, t), cumulative_wh=11)
    also_good = chain.sign(other, 10, t)
    batch = [good.as_tuple(), bad.as_tuple(), also_good.as_tuple()]
    assert m.settle(batch).call(block_identifier="pending") == 2
    receipt = chain.settle_at(t, good, bad, also_good)
    assert skipped(chain, receipt) == [(other.address, 11, t, "BadSignature")]
    assert len(chain.events(receipt, "ReadingsAccepted")) == 1
    assert accepted(chain, receipt) == [packed(good), packed(also_good)]
    assert chain.meter(meter.address)["lastWh"] == 1200
    assert chain.meter(other.address)["lastWh"] == 10
    assert chain.connection(connection)["deliveredWh"] == 200


def test_empty_and_all_bad_batches(chain: Chain, meter: LocalAccount) -> None:
    t = chain.now() + 10
    receipt = chain.settle_at(t)
    assert receipt["logs"] == []
    receipt = chain.settle_at(t + 1, chain.sign(meter, BASELINE, t - 100))
    assert accepted(chain, receipt) == []
    assert len(skipped(chain, receipt)) == 1


def test_energy_beyond_cap_completes_connection(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    m = chain.market.functions
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, 3000, t))
    receipt = chain.settle_at(t + 900, chain.sign(meter, BASELINE + CAP + 1234, t + 900))
    paid = pay(PRICE, CAP)
    refund = escrow(PRICE, CAP) - paid
    assert refund == 1  # the rounding of the escrow comes back to the buyer
    assert chain.events(receipt, "ConnectionEnded") == [
        {"id": connection, "deliveredWh": CAP, "paidWei": paid, "refundWei": refund, "completed": True}
    ]
    assert chain.events(receipt, "PaymentClaimed") == [
        {"id": connection, "seller": seller, "deliveredWh": CAP, "amountWei": paid}
    ]
    view = chain.connection(connection)
    assert (STATUS[view["status"]], view["deliveredWh"], view["paidWei"], view["escrowWei"]) == (
        "Completed",
        CAP,
        paid,
        0,
    )
    assert view["delivering"] is False
    assert chain.credit(seller) == paid
    assert chain.credit(buyer) == refund
    assert chain.escrow(buyer) == 0
    assert chain.open_ids(seller) == []
    assert chain.open_ids(buyer) == []
    assert chain.meter(meter.address)["fillingConnection"] == 0
    chain.assert_conserved()
    # Later energy goes nowhere; the ended connection can no longer be closed or claimed.
    chain.settle_at(t + 1800, chain.sign(meter, 50_000, t + 1800))
    assert chain.credit(seller) == paid
    assert chain.reverts(m.closeConnection(connection), buyer) == (
        "WrongStatus",
        (connection, STATUS.index("Completed")),
    )
    assert chain.reverts(m.claim(connection), seller) == ("WrongStatus", (connection, STATUS.index("Completed")))
    chain.assert_conserved()


def test_exact_cap_completes(chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount) -> None:
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, BASELINE + CAP - 1, t))
    assert STATUS[chain.connection(connection)["status"]] == "Active"
    chain.settle_at(t + 1, chain.sign(meter, BASELINE + CAP, t + 1))
    assert STATUS[chain.connection(connection)["status"]] == "Completed"
    assert chain.credit(seller) == pay(PRICE, CAP)
    chain.assert_conserved()


def test_excess_flows_to_queued_connections_oldest_first(chain: Chain, buyer: str, meter: LocalAccount) -> None:
    s1, s2, s3 = chain.accounts[5], chain.accounts[6], chain.accounts[7]
    p1, p2, p3 = 10**12 + 1, 2 * 10**12 + 3, 3 * 10**12 + 9
    c1 = chain.award(s1, buyer, meter.address, 1000, p1)
    c2 = chain.award(s2, buyer, meter.address, 2000, p2)
    c3 = chain.award(s3, buyer, meter.address, 500, p3)
    assert chain.open_ids(buyer) == [c3, c2, c1]
    queued = chain.connection(c2)
    assert (queued["delivering"], queued["deliveredWh"], queued["escrowWei"]) == (False, 0, escrow(p2, 2000))
    assert chain.escrow(buyer) == escrow(p1, 1000) + escrow(p2, 2000) + escrow(p3, 500)

    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, 1600, t))
    assert [chain.connection(c)["deliveredWh"] for c in (c1, c2, c3)] == [600, 0, 0]

    receipt = chain.settle_at(t + 900, chain.sign(meter, 3500, t + 900))
    assert [e["id"] for e in chain.events(receipt, "ConnectionEnded")] == [c1]
    assert STATUS[chain.connection(c1)["status"]] == "Completed"
    assert chain.connection(c2)["delivering"] is True
    assert chain.meter(meter.address)["fillingConnection"] == c2
    assert [chain.connection(c)["deliveredWh"] for c in (c1, c2, c3)] == [1000, 1500, 0]
    assert (chain.credit(s1), chain.credit(s2), chain.credit(s3)) == (pay(p1, 1000), pay(p2, 1500), 0)
    chain.assert_conserved()

    # One reading fills the rest of c2 and all of c3; what is left over is billed to nobody.
    receipt = chain.settle_at(t + 1800, chain.sign(meter, 10_000, t + 1800))
    assert [e["id"] for e in chain.events(receipt, "ConnectionEnded")] == [c2, c3]
    assert [chain.connection(c)["deliveredWh"] for c in (c1, c2, c3)] == [1000, 2000, 500]
    assert (chain.credit(s1), chain.credit(s2), chain.credit(s3)) == (
        pay(p1, 1000),
        pay(p2, 2000),
        pay(p3, 500),
    )
    refunds = sum(escrow(p, wh) - pay(p, wh) for p, wh in ((p1, 1000), (p2, 2000), (p3, 500)))
    assert chain.credit(buyer) == refunds
    assert chain.escrow(buyer) == 0
    assert chain.meter(meter.address)["fillingConnection"] == 0
    chain.assert_conserved()

    # A new connection on the emptied queue starts from the meter's reading at its award.
    c4 = chain.award(s1, buyer, meter.address, 1000, p1)
    assert chain.connection(c4)["delivering"] is True
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, 10_100, t))
    assert chain.connection(c4)["deliveredWh"] == 100
    chain.assert_conserved()


def test_queued_connection_starts_from_its_baseline(
    chain: Chain, connection: int, seller: str, buyer: str, meter: LocalAccount
) -> None:
    """Energy drawn before the second award belongs to the first connection, never to the second."""
    m = chain.market.functions
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, 3000, t))
    second_seller = chain.accounts[6]
    offer_id = chain.create_offer(second_seller, 4000, PRICE)
    chain.place_bid(offer_id, buyer, meter.address, PRICE)
    chain.travel(600)
    receipt = chain.tx(m.finalize(offer_id), second_seller)
    assert chain.events(receipt, "ConnectionOpened")[0]["baselineWh"] == 3000
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, 7000, t))
    assert chain.connection(connection)["deliveredWh"] == CAP  # 1000 up to 5999
    assert chain.connection(offer_id)["deliveredWh"] == 7000 - BASELINE - CAP  # 5999 to 7000, not from 3000
    assert chain.credit(seller) == pay(PRICE, CAP)
    assert chain.credit(second_seller) == pay(PRICE, 7000 - BASELINE - CAP)
    chain.assert_conserved()


def test_reading_taken_before_award_is_not_billed(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    """DESIGN: the meter's last reading *at or before the award* is the baseline, so energy drawn
    before the award is never charged. A reading timestamped before the award but relayed in the
    oracle's next batch (after the award) is such a reading."""
    m = chain.market.functions
    offer_id = chain.create_offer(seller, CAP, PRICE)
    chain.place_bid(offer_id, buyer, meter.address, PRICE)
    chain.travel(600)
    awarded_at = chain.now() + 10
    chain.tx_at(awarded_at, m.finalize(offer_id), seller)
    before_award = chain.sign(meter, 1500, awarded_at - 1)  # 500 Wh drawn before the award
    after_award = chain.sign(meter, 2500, awarded_at + 60)
    chain.settle_at(awarded_at + 100, before_award, after_award)
    assert chain.connection(offer_id)["deliveredWh"] == 1000
    assert chain.credit(seller) == pay(PRICE, 1000)
    chain.assert_conserved()


def test_payment_from_cumulative_does_not_drift(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    m = chain.market.functions
    price = 10**9 + 333  # 7 Wh cost 7000002.331 wei: a per-reading floor would lose 0.331 wei each time
    connection = chain.award(seller, buyer, meter.address, 100_000, price)
    t = chain.now() + 10
    wh = BASELINE
    withdrawn = 0
    for step in range(1, 31):
        wh += 7
        chain.settle_at(t + step * 60, chain.sign(meter, wh, t + step * 60))
        if step == 10:
            chain.tx(m.claim(connection), chain.accounts[9])
        if step == 20:
            receipt = chain.tx(m.withdraw(), seller)
            withdrawn += chain.events(receipt, "Withdrawn")[0]["amountWei"]
    # and a batch of ten more small readings in one transaction
    batch = [chain.sign(meter, wh + 7 * i, t + 2000 + i) for i in range(1, 11)]
    wh += 70
    receipt = chain.settle_at(t + 2100, *batch)
    assert len(accepted(chain, receipt)) == 10
    delivered = wh - BASELINE
    assert delivered == 280
    assert sum(pay(price, 7) for _ in range(40)) < pay(price, delivered)  # what drift would look like
    view = chain.connection(connection)
    assert (view["deliveredWh"], view["paidWei"]) == (delivered, pay(price, delivered))
    assert withdrawn + chain.credit(seller) == pay(price, delivered)
    assert chain.escrow(buyer) == escrow(price, 100_000) - pay(price, delivered)
    chain.assert_conserved()


def test_settle_is_open_to_any_relayer(chain: Chain, connection: int, meter: LocalAccount) -> None:
    t = chain.now() + 10
    chain.set_next_timestamp(t)
    chain.tx(chain.market.functions.settle([chain.sign(meter, 1100, t).as_tuple()]), chain.accounts[12])
    assert chain.connection(connection)["deliveredWh"] == 100
