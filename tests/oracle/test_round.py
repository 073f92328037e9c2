"""A full trading round driven by the oracle: the keeper finalizes and releases, the relayer settles."""

from __future__ import annotations

from collections.abc import Callable

from oracle.readings import sign_reading
from tests.chain import STATUS, Chain, gas_cost
from tests.oracle.conftest import GRACE, Oracle

PRICE = 3 * 10**15 + 7  # wei per kWh; odd, so rounding down to the wei is visible
ENERGY_WH = 5_000


def test_full_round_pays_seller_to_the_wei(chain: Chain, start_oracle: Callable[..., Oracle]) -> None:
    seller, buyer, rival = chain.accounts[4], chain.accounts[5], chain.accounts[6]
    meter = chain.new_meter(buyer)
    rival_meter = chain.new_meter(rival)
    oracle = start_oracle(chain)

    def report(wh: int, which: object = meter) -> int:
        """The meter signs its cumulative reading now; the oracle accepts it; returns its timestamp."""
        key = meter.key if which is meter else rival_meter.key
        ts = chain.now()
        status, body = oracle.post(sign_reading(key, chain.domain, wh, ts).to_json())
        assert status == 202, body
        return ts

    # Both meters report once (a bid needs a meter that has reported), settled by the relayer.
    report(10_000)
    chain.travel(1)
    report(500, rival_meter)
    assert oracle.tick()["relayer"]["settled"] == 2

    offer = chain.create_offer(seller, ENERGY_WH, PRICE - 10**9, 600)
    chain.place_bid(offer, rival, rival_meter.address, PRICE - 10**9)
    chain.place_bid(offer, buyer, meter.address, PRICE)
    assert oracle.tick()["keeper"]["finalized"] == []  # bidding still open
    chain.travel(601)
    assert oracle.tick()["keeper"]["finalized"] == [offer]
    assert STATUS[chain.connection(offer)["status"]] == "Active"

    chain.travel(60)
    report(11_200)
    chain.travel(60)
    report(12_345)
    assert oracle.tick()["relayer"]["settled"] == 1  # only the newest reading of the meter is needed
    assert chain.connection(offer)["deliveredWh"] == 2_345

    chain.travel(30)
    chain.tx(chain.market.functions.closeConnection(offer), buyer)
    closed_at = chain.connection(offer)["closedAt"]
    # A reading taken at the close still settles within the grace window.
    status, body = oracle.post(sign_reading(meter.key, chain.domain, 13_001, closed_at).to_json())
    assert status == 202, body
    assert oracle.tick()["relayer"]["settled"] == 1
    assert oracle.tick()["keeper"]["released"] == []  # grace window not over
    chain.travel(GRACE + 1)
    assert oracle.tick()["keeper"]["released"] == [offer]

    delivered = 3_001
    paid = PRICE * delivered // 1000
    escrow = (PRICE * ENERGY_WH + 999) // 1000
    rival_escrow = ((PRICE - 10**9) * ENERGY_WH + 999) // 1000
    connection = chain.connection(offer)
    assert (STATUS[connection["status"]], connection["deliveredWh"], connection["paidWei"]) == (
        "Released",
        delivered,
        paid,
    )
    assert chain.credit(seller) == paid
    assert chain.credit(buyer) == escrow - paid
    assert chain.credit(rival) == rival_escrow
    assert chain.escrow(buyer) == 0

    before = chain.w3.eth.get_balance(seller)
    receipt = chain.tx(chain.market.functions.withdraw(), seller)
    assert chain.w3.eth.get_balance(seller) == before + paid - gas_cost(receipt)
    assert oracle.meter(meter.address)["pending"] == 0
