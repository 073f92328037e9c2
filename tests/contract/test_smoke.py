from tests.chain import STATUS, Chain


def test_full_round(chain: Chain) -> None:
    m = chain.market.functions
    seller, buyer = chain.accounts[1], chain.accounts[2]
    meter = chain.new_meter(buyer)
    t0 = chain.now()
    chain.settle(chain.sign(meter, 1000, t0))
    r = chain.tx(m.createOffer(5000, 10**14, 600), seller)
    offer_id = chain.events(r, "OfferCreated")[0]["id"]
    price = 2 * 10**14
    chain.tx(m.bid(offer_id, price, meter.address), buyer, chain.escrow_for(offer_id, price))
    chain.travel(601)
    chain.tx(m.finalize(offer_id), seller)
    c = m.getConnection(offer_id).call()
    assert STATUS[c[10]] == "Active"
    t = chain.now() + 1  # a reading taken in the award's own second would be the baseline
    r = chain.settle(chain.sign(meter, 3000, t))
    c = m.getConnection(offer_id).call()
    assert c[6] == 2000
    assert chain.credit(seller) == 2000 * price // 1000
    assert chain.balance() == chain.escrow(buyer) + chain.credit(seller) + chain.credit(buyer)
