"""Registrar rules: who may register and revoke meters, and what a registration means.

Also the market's identity: ERC-165, the EIP-712 domain meters sign for, and its currency; the
same in both currency modes.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils.crypto import keccak
from web3.exceptions import ContractCustomError

from devchain.deploy import deploy_market
from tests.chain import NATIVE, SKIP, Chain, custom_error

ZERO = "0x0000000000000000000000000000000000000000"


def test_register_meter_assigns_ids_and_owner(chain: Chain) -> None:
    m = chain.market.functions
    owner = chain.accounts[1]
    first, second = Account.create(), Account.create()
    receipt = chain.tx(m.registerMeter(first.address, owner), chain.registrar)
    assert chain.events(receipt, "MeterRegistered") == [{"meter": first.address, "owner": owner, "meterId": 1}]
    receipt = chain.tx(m.registerMeter(second.address, chain.accounts[2]), chain.registrar)
    assert chain.events(receipt, "MeterRegistered")[0]["meterId"] == 2
    assert chain.meter(first.address) == {
        "owner": owner,
        "id": 1,
        "registered": True,
        "lastWh": 0,
        "lastTimestamp": 0,
        "fillingConnection": 0,
    }
    assert chain.meter(second.address)["owner"] == chain.accounts[2]


def test_unknown_meter_view_is_empty(chain: Chain) -> None:
    assert chain.meter(Account.create().address) == {
        "owner": ZERO,
        "id": 0,
        "registered": False,
        "lastWh": 0,
        "lastTimestamp": 0,
        "fillingConnection": 0,
    }


def test_only_registrar_registers_revokes_and_transfers(chain: Chain) -> None:
    m = chain.market.functions
    intruder = chain.accounts[3]
    meter = chain.new_meter(chain.accounts[1])
    other = Account.create().address
    assert chain.reverts(m.registerMeter(other, intruder), intruder) == ("NotRegistrar", (intruder,))
    assert chain.reverts(m.revokeMeter(meter.address), intruder) == ("NotRegistrar", (intruder,))
    assert chain.reverts(m.transferRegistrar(intruder), intruder) == ("NotRegistrar", (intruder,))
    assert chain.meter(other)["registered"] is False
    assert chain.meter(meter.address)["registered"] is True
    assert m.registrar().call() == chain.registrar


def test_register_rejects_zero_addresses_and_duplicates(chain: Chain) -> None:
    m = chain.market.functions
    owner = chain.accounts[1]
    meter = Account.create().address
    assert chain.reverts(m.registerMeter(ZERO, owner), chain.registrar) == ("ZeroAddress", ())
    assert chain.reverts(m.registerMeter(meter, ZERO), chain.registrar) == ("ZeroAddress", ())
    chain.tx(m.registerMeter(meter, owner), chain.registrar)
    assert chain.reverts(m.registerMeter(meter, chain.accounts[2]), chain.registrar) == (
        "MeterAlreadyRegistered",
        (meter,),
    )
    assert chain.meter(meter)["owner"] == owner


def test_revoke_meter(chain: Chain) -> None:
    m = chain.market.functions
    meter = chain.new_meter(chain.accounts[1])
    receipt = chain.tx(m.revokeMeter(meter.address), chain.registrar)
    assert chain.events(receipt, "MeterRevoked") == [{"meter": meter.address}]
    view = chain.meter(meter.address)
    assert view["registered"] is False
    assert view["owner"] == ZERO
    assert view["id"] == 1
    assert chain.reverts(m.revokeMeter(meter.address), chain.registrar) == ("MeterNotRegistered", (meter.address,))
    never = Account.create().address
    assert chain.reverts(m.revokeMeter(never), chain.registrar) == ("MeterNotRegistered", (never,))


def test_revoked_meter_cannot_back_a_bid(chain: Chain) -> None:
    m = chain.market.functions
    seller, buyer = chain.accounts[1], chain.accounts[2]
    meter = chain.new_meter(buyer)
    chain.settle(chain.sign(meter, 100, chain.now()))
    chain.tx(m.revokeMeter(meter.address), chain.registrar)
    offer_id = chain.create_offer(seller, 1000, 10**12)
    escrow = chain.escrow_for(offer_id, 10**12)
    assert chain.reverts(m.bid(offer_id, 10**12, meter.address), buyer, escrow) == (
        "NotMeterOwner",
        (meter.address, ZERO),
    )
    assert chain.offer(offer_id)["highestBidder"] == ZERO
    chain.assert_conserved()


def test_transfer_registrar(chain: Chain) -> None:
    m = chain.market.functions
    old, new = chain.registrar, chain.accounts[5]
    assert chain.reverts(m.transferRegistrar(ZERO), old) == ("ZeroAddress", ())
    receipt = chain.tx(m.transferRegistrar(new), old)
    assert chain.events(receipt, "RegistrarTransferred") == [{"previousRegistrar": old, "newRegistrar": new}]
    assert m.registrar().call() == new
    meter = Account.create().address
    assert chain.reverts(m.registerMeter(meter, chain.accounts[1]), old) == ("NotRegistrar", (old,))
    chain.tx(m.registerMeter(meter, chain.accounts[1]), new)
    assert chain.meter(meter)["registered"] is True
    chain.tx(m.revokeMeter(meter), new)
    assert chain.meter(meter)["registered"] is False


def test_deploy_announces_registrar_and_rejects_zero(chain: Chain) -> None:
    deployed = chain.market.events.RegistrarTransferred().get_logs(from_block=0)
    mine = [dict(e["args"]) for e in deployed if e["address"] == chain.market.address]
    assert mine == [{"previousRegistrar": ZERO, "newRegistrar": chain.registrar}]
    with pytest.raises(ContractCustomError) as exc:
        deploy_market(chain.w3, chain.accounts[0], registrar=ZERO, currency=chain.currency)
    assert custom_error(exc.value) == ("ZeroAddress", ())


def test_reregistered_meter_keeps_replay_protection(chain: Chain) -> None:
    m = chain.market.functions
    first_owner, second_owner, seller = chain.accounts[1], chain.accounts[2], chain.accounts[3]
    meter = chain.new_meter(first_owner)
    t = chain.now()
    old = chain.sign(meter, 1000, t + 10)
    chain.settle_at(t + 20, old)
    chain.tx(m.revokeMeter(meter.address), chain.registrar)

    while_revoked = chain.sign(meter, 1500, t + 30)
    receipt = chain.settle_at(t + 40, while_revoked)
    assert [SKIP[e["reason"]] for e in chain.events(receipt, "ReadingSkipped")] == ["UnknownMeter"]

    receipt = chain.tx(m.registerMeter(meter.address, second_owner), chain.registrar)
    assert chain.events(receipt, "MeterRegistered")[0]["meterId"] == 1
    view = chain.meter(meter.address)
    assert (view["owner"], view["registered"], view["lastWh"], view["lastTimestamp"]) == (
        second_owner,
        True,
        1000,
        t + 10,
    )
    # The old reading is not newer than what the meter already reported: a replay, skipped.
    receipt = chain.settle_at(t + 60, old)
    assert [SKIP[e["reason"]] for e in chain.events(receipt, "ReadingSkipped")] == ["NotNewer"]
    assert chain.events(receipt, "ReadingsAccepted") == []
    assert chain.meter(meter.address)["lastWh"] == 1000

    # Only the new owner may bid with it now.
    offer_id = chain.create_offer(seller, 1000, 10**12)
    escrow = chain.escrow_for(offer_id, 10**12)
    assert chain.reverts(m.bid(offer_id, 10**12, meter.address), first_owner, escrow) == (
        "NotMeterOwner",
        (meter.address, second_owner),
    )
    chain.place_bid(offer_id, second_owner, meter.address, 10**12)
    assert chain.offer(offer_id)["highestBidder"] == second_owner
    chain.assert_conserved()


def test_supports_interface(chain: Chain) -> None:
    m = chain.market.functions
    market_id = m.MARKET_INTERFACE_ID().call()
    assert market_id == keccak(text="EnergyKart.EnergyMarket.v1")[:4]
    assert m.supportsInterface(market_id).call() is True
    assert m.supportsInterface(bytes.fromhex("01ffc9a7")).call() is True
    assert m.supportsInterface(bytes.fromhex("ffffffff")).call() is False
    assert m.supportsInterface(bytes.fromhex("80ac58cd")).call() is False  # ERC-721


def test_eip712_domain_matches_what_meters_sign(chain: Chain) -> None:
    m = chain.market.functions
    fields, name, version, chain_id, contract, salt, extensions = m.eip712Domain().call()
    assert fields == b"\x0f"
    assert (name, version) == ("Energy-Kart", "1")
    assert chain_id == chain.w3.eth.chain_id
    assert contract == chain.market.address
    assert salt == bytes(32)
    assert extensions == []
    assert m.domainSeparator().call() == chain.domain.separator()
    assert m.READING_TYPEHASH().call() == keccak(text="Reading(address meter,uint64 cumulativeWh,uint64 timestamp)")


def test_currency_is_the_one_fixed_at_deployment(chain: Chain) -> None:
    """currency() is address(0) in a native market, else the token; readings sign for the same
    domain in both (see the test above), so a meter needs no change."""
    currency = chain.market.functions.currency().call()
    assert currency == chain.currency
    assert (currency == ZERO) == (chain.mode == NATIVE)
