"""The node refuses one reading or one keeper action: the others of the round still go ahead.

A dedicated anvil whose block gas limit the tests lower (evm_setBlockGasLimit) makes the node
refuse what costs more than the limit, the way a real node does: a reading that ends connections
costs several plain ones, a release in the middle of its seller's and buyer's lists costs more
than a lone one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import aiohttp
import pytest
from web3 import Web3
from web3.types import RPCEndpoint

from devchain.anvil import Anvil, free_port
from oracle.chain import ChainError, MarketClient, NodeRefused
from oracle.config import MIN_GAS_BUDGET
from oracle.readings import SignedReading
from oracle.transactions import GAS_MARGIN
from tests.chain import STATUS, Chain
from tests.oracle.conftest import GRACE, Oracle, make_chain

PRICE = 10**15
ANVIL_GAS_LIMIT = 30_000_000  # anvil's default


@pytest.fixture
def chain() -> Iterator[Chain]:
    """A market on an anvil of its own: the block gas limit these tests lower is the whole node's."""
    with Anvil(accounts=30) as node:
        yield make_chain(Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 30})))


def set_block_gas_limit(chain: Chain, gas: int) -> None:
    chain.w3.provider.make_request(RPCEndpoint("evm_setBlockGasLimit"), [hex(gas)])
    chain.w3.provider.make_request(RPCEndpoint("evm_mine"), [])  # the next block has the new limit


def settle_gas(chain: Chain, *readings: SignedReading) -> int:
    return int(
        chain.market.functions.settle([r.as_tuple() for r in readings]).estimate_gas({"from": chain.accounts[-1]})
    )


def release_gas(chain: Chain, connection_id: int) -> int:
    return int(chain.market.functions.release(connection_id).estimate_gas({"from": chain.accounts[-1]}))


def warnings_about(oracle: Oracle, what: str) -> list[str]:
    return [line for line in oracle.log.read_text().splitlines() if " WARNING " in line and what in line]


def test_reading_the_node_refuses_waits_while_the_others_settle(
    chain: Chain, start_oracle: Callable[..., Oracle]
) -> None:
    seller, buyer = chain.accounts[4], chain.accounts[5]
    busy = chain.new_meter(buyer)
    plain = [chain.new_meter(chain.accounts[6 + i]) for i in range(5)]
    start = chain.now()
    chain.settle(*(chain.sign(m, 1_000, start) for m in [busy, *plain]))
    connections = [chain.award(seller, buyer, busy.address, 10, PRICE) for _ in range(6)]
    chain.travel(60)
    now = chain.now()
    heavy = chain.sign(busy, 1_100, now)  # completes all six connections
    light = [chain.sign(m, 1_050, now) for m in plain]
    # A block gas limit that takes every plain reading at once, but not the one that ends connections.
    plain_gas, heavy_gas = settle_gas(chain, *light), settle_gas(chain, heavy)
    limit = max((plain_gas + heavy_gas) // 2, MIN_GAS_BUDGET)
    assert plain_gas < limit < heavy_gas, (plain_gas, heavy_gas)

    oracle = start_oracle(chain, "--dev", "--timestep", "3600", "--confirmations", "0", "--gas-budget", str(limit))
    set_block_gas_limit(chain, limit)
    status, body = oracle.post_readings([heavy, *light])
    assert (status, body["accepted"]) == (200, 6), body

    relayer = oracle.tick()["relayer"]
    assert (relayer["sent"], relayer["settled"], relayer["deferred"]) == (5, 5, 1)
    for reading in light:
        assert chain.meter(reading.meter)["lastTimestamp"] == reading.timestamp
    assert chain.meter(busy.address)["lastTimestamp"] == start
    assert oracle.meter(busy.address)["pending"] == 1
    assert {STATUS[chain.connection(c)["status"]] for c in connections} == {"Active"}

    # Still refused next round: it waits again, and its meter is not warned about twice in a row.
    assert oracle.tick()["relayer"]["deferred"] == 1
    assert len(warnings_about(oracle, busy.address)) == 1
    assert oracle.metric("energykart_oracle_readings_deferred_total") == 2
    assert oracle.metric("energykart_oracle_rpc_errors_total") == 0  # no round failed

    set_block_gas_limit(chain, ANVIL_GAS_LIMIT)  # the cause goes away
    relayer = oracle.tick()["relayer"]
    assert (relayer["settled"], relayer["deferred"]) == (1, 0)
    assert chain.meter(busy.address)["lastTimestamp"] == heavy.timestamp
    assert {STATUS[chain.connection(c)["status"]] for c in connections} == {"Completed"}
    assert oracle.meter(busy.address)["pending"] == 0


def test_keeper_action_the_node_refuses_does_not_stop_the_others(
    chain: Chain, start_oracle: Callable[..., Oracle]
) -> None:
    acc = chain.accounts
    busy_seller, busy_buyer = acc[4], acc[5]
    busy, other = chain.new_meter(busy_buyer), chain.new_meter(busy_buyer)
    lone = [(acc[6 + 2 * i], acc[7 + 2 * i], chain.new_meter(acc[7 + 2 * i])) for i in range(2)]
    now = chain.now()
    chain.settle(*(chain.sign(m, 1_000, now) for m in [busy, other, *(m for _s, _b, m in lone)]))
    # `heavy` sits in the middle of its seller's and its buyer's lists, with a connection queued
    # behind it and energy delivered: releasing it costs more than releasing a lone connection
    # (which writes its record's last slot for the first time). Lower ids go first.
    chain.award(busy_seller, busy_buyer, other.address, 10, PRICE)
    heavy = chain.award(busy_seller, busy_buyer, busy.address, 10, PRICE)
    chain.award(busy_seller, busy_buyer, busy.address, 10, PRICE)
    chain.award(busy_seller, busy_buyer, other.address, 10, PRICE)
    first, second = (chain.award(seller, buyer, meter.address, 10, PRICE) for seller, buyer, meter in lone)
    # `heavy` has delivered energy: its release also pays its seller and refunds its buyer.
    chain.settle(chain.sign(busy, 1_005, chain.now()))
    oracle = start_oracle(chain)
    for connection_id, buyer in ((heavy, busy_buyer), (first, lone[0][1])):
        chain.tx(chain.market.functions.closeConnection(connection_id), buyer)
    chain.travel(GRACE + 1)

    # The estimate fails: the release needs more gas than a block holds.
    heavy_gas, lone_gas = release_gas(chain, heavy), release_gas(chain, first)
    limit = (heavy_gas + int(lone_gas * GAS_MARGIN)) // 2  # the lone release fits with the keeper's margin
    assert int(lone_gas * GAS_MARGIN) < limit < heavy_gas, (heavy_gas, lone_gas)
    set_block_gas_limit(chain, limit)
    assert oracle.tick()["keeper"]["released"] == [first]
    assert STATUS[chain.connection(heavy)["status"]] == "Closed"
    assert len(warnings_about(oracle, f"release {heavy} failed")) == 1

    # The send fails: the estimate fits in a block, the keeper's gas margin does not. The
    # transaction after it still gets the nonce the node did not take, and is mined.
    set_block_gas_limit(chain, ANVIL_GAS_LIMIT)
    chain.tx(chain.market.functions.closeConnection(second), lone[1][1])
    chain.travel(GRACE + 1)
    heavy_gas, lone_gas = release_gas(chain, heavy), release_gas(chain, second)
    limit = max(heavy_gas + 1_000, int(lone_gas * GAS_MARGIN))
    assert limit < int(heavy_gas * GAS_MARGIN), (heavy_gas, lone_gas)
    set_block_gas_limit(chain, limit)
    assert oracle.tick()["keeper"]["released"] == [second]
    assert len(warnings_about(oracle, f"release {heavy} failed")) == 2
    assert oracle.metric('energykart_oracle_keeper_actions_total{action="release",outcome="failed"}') == 2
    assert oracle.metric("energykart_oracle_rpc_errors_total") == 0

    set_block_gas_limit(chain, ANVIL_GAS_LIMIT)
    assert oracle.tick()["keeper"]["released"] == [heavy]
    assert STATUS[chain.connection(heavy)["status"]] == "Released"


async def test_only_an_answering_node_refuses(chain: Chain) -> None:
    """Refusals are told apart from an unreachable node, whose errors fail the round as before."""
    reading = chain.sign(chain.new_meter(chain.accounts[4]), 1, chain.now())
    set_block_gas_limit(chain, 30_000)  # below any settle
    answering: str = chain.w3.provider.endpoint_uri  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as session:
        for url, error in ((answering, NodeRefused), (f"http://127.0.0.1:{free_port()}", ChainError)):
            client = MarketClient(session, url, chain.market.address)
            with pytest.raises(ChainError) as raised:
                await client.estimate(client.settle_call([reading.as_tuple()]), chain.accounts[4])
            assert type(raised.value) is error
