"""A fresh EnergyMarket per test on the session's anvil node."""

from __future__ import annotations

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from devchain.anvil import Anvil
from devchain.deploy import deploy_market
from oracle.readings import Domain
from tests.chain import Chain


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))


@pytest.fixture
def chain(w3: Web3) -> Chain:
    accounts = list(w3.eth.accounts)
    registrar = accounts[0]
    market = deploy_market(w3, registrar, timestep=900, min_bid_increment=10**9)
    return Chain(
        w3=w3,
        market=market,
        registrar=registrar,
        accounts=accounts,
        domain=Domain(chain_id=w3.eth.chain_id, contract=market.address),
    )


@pytest.fixture
def seller(chain: Chain) -> str:
    return chain.accounts[1]


@pytest.fixture
def buyer(chain: Chain) -> str:
    return chain.accounts[2]


@pytest.fixture
def meter(chain: Chain, buyer: str) -> LocalAccount:
    """The buyer's meter, which has reported 1000 Wh (bids need a meter that has reported)."""
    meter = chain.new_meter(buyer)
    chain.settle(chain.sign(meter, 1000, chain.now()))
    return meter
