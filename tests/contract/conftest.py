"""A fresh EnergyMarket per test on the session's anvil node, in each currency mode: the native
coin, and an ERC-20 token (a DemoToken deployed for the test)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from devchain.anvil import Anvil
from devchain.deploy import deploy_token
from tests.chain import ERC20, MODES, Chain, register_errors
from tests.contract.solidity import TEST_CONTRACTS, compile_sources

TOKEN_DECIMALS = 18


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))


@pytest.fixture(scope="session")
def test_contracts() -> dict[str, dict[str, Any]]:
    """The test contracts (Books, Reenterer, the test tokens) compiled once per session; their
    custom errors decode in `Chain.reverts`."""
    compiled = compile_sources(TEST_CONTRACTS)
    for contract in compiled.values():
        register_errors(contract["abi"])
    return compiled


@pytest.fixture(params=MODES)
def chain(request: pytest.FixtureRequest, w3: Web3, test_contracts: dict[str, dict[str, Any]]) -> Chain:
    """The market of the test, once per currency mode; `tests.chain.only(mode)` picks one."""
    token = None
    if request.param == ERC20:
        token = deploy_token(w3, w3.eth.accounts[0], name="Energy-Kart Euro", symbol="EURe", decimals=TOKEN_DECIMALS)
    return Chain.deploy(w3, token, books=test_contracts["Books"])


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
