"""Fixtures of the integration's tests: a fresh market per test on the session's anvil."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import (  # type: ignore[import-untyped]
    MockConfigEntry,
    async_fire_time_changed,
)
from web3 import Web3
from web3.contract import Contract
from web3.types import RPCEndpoint, TxReceipt

from custom_components.energykart.const import (
    CONF_ACCOUNT,
    CONF_CHAIN_ID,
    CONF_CONTRACT_ADDRESS,
    CONF_DEPLOYMENT_BLOCK,
    CONF_METER_ADDRESS,
    CONF_PRIVATE_KEY,
    CONF_RPC_URL,
    CONF_SCAN_INTERVAL,
    CONF_START_BLOCK,
    DOMAIN,
)
from devchain.anvil import DEFAULT_MNEMONIC, Anvil
from devchain.deploy import DEFAULT_MIN_BID_INCREMENT, NATIVE, deploy_market, deploy_token
from oracle.readings import Domain
from tests.chain import Chain
from tests.contract.solidity import compile_sources

Account.enable_unaudited_hdwallet_features()
KEYS: list[LocalAccount] = [
    Account.from_mnemonic(DEFAULT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(20)
]
SELLER, BUYER, RIVAL = KEYS[11], KEYS[12], KEYS[13]
START_BALANCE = 100 * 10**18
START_TOKENS = 1000  # whole tokens minted to the seller, the buyer and the rival of a token market
PLAIN_TOKEN_SOURCE = Path(__file__).with_name("PlainToken.sol")
# Compiles PlainToken.sol (path in argv) with the repository's pinned solcjs and OpenZeppelin; prints {abi, bytecode}.


@pytest.fixture(autouse=True)
def auto_enable(enable_custom_integrations: None, socket_enabled: None) -> None:
    """Load custom_components/ and let the tests reach anvil on 127.0.0.1."""


def make_chain(url: str, currency: str = NATIVE, min_bid_increment: int = DEFAULT_MIN_BID_INCREMENT) -> Chain:
    """A market settling in `currency` (the native coin, or a token's address), and ETH for the parties' gas."""
    w3 = Web3(Web3.HTTPProvider(url))
    registrar = w3.eth.accounts[0]
    market = deploy_market(w3, registrar, currency=currency, min_bid_increment=min_bid_increment)
    for account in (SELLER, BUYER, RIVAL):
        w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [account.address, hex(START_BALANCE)])
    return Chain(
        w3=w3,
        market=market,
        registrar=registrar,
        accounts=list(w3.eth.accounts),
        domain=Domain(chain_id=w3.eth.chain_id, contract=market.address),
    )


@dataclass
class TokenMarket:
    """A market settling in `token`, whose seller, buyer and rival hold START_TOKENS of it."""

    chain: Chain
    token: Contract

    @property
    def decimals(self) -> int:
        return int(self.token.functions.decimals().call())

    def units(self, amount: str) -> int:
        """An amount of the token, written in whole tokens, in its smallest unit."""
        return int(Decimal(amount).scaleb(self.decimals))

    def balance(self, account: str) -> int:
        return int(self.token.functions.balanceOf(account).call())

    def allowance(self, owner: str) -> int:
        """What the market may still pull from `owner`."""
        return int(self.token.functions.allowance(owner, self.chain.market.address).call())

    def bid(self, bidder: str, offer_id: int, price: int, meter: str) -> TxReceipt:
        """Approve exactly the escrow, then bid (as any wallet would, outside Home Assistant)."""
        escrow = self.chain.escrow_for(offer_id, price)
        self.chain.tx(self.token.functions.approve(self.chain.market.address, escrow), bidder)
        return self.chain.tx(self.chain.market.functions.bid(offer_id, price, meter), bidder)


def make_token_market(url: str, token: Contract | None = None, *, decimals: int = 18) -> TokenMarket:
    """A market settling in `token`, by default a DemoToken (OpenZeppelin, with permits) named EURe.

    Bids rise by at least a thousandth of a token per kWh.
    """
    w3 = Web3(Web3.HTTPProvider(url))
    if token is None:
        token = deploy_token(w3, w3.eth.accounts[0], name="Monerium EURe", symbol="EURe", decimals=decimals)
    one = 10 ** int(token.functions.decimals().call())
    chain = make_chain(url, currency=token.address, min_bid_increment=one // 1000)
    for account in (SELLER, BUYER, RIVAL):
        chain.tx(token.functions.mint(account.address, START_TOKENS * one), chain.registrar)
    return TokenMarket(chain=chain, token=token)


@pytest.fixture(scope="session")
def plain_token_artifact() -> dict[str, Any]:
    """PlainToken.sol compiled once per session with node_modules/solc."""
    return compile_sources([PLAIN_TOKEN_SOURCE])["PlainToken"]


def deploy_plain_token(url: str, artifact: dict[str, Any], *, symbol: str = "EURe", decimals: int = 18) -> Contract:
    """A PlainToken: an ERC-20 without permits, whose approve behaves like USDT's."""
    w3 = Web3(Web3.HTTPProvider(url))
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx_hash = factory.constructor("Plain Euro", symbol, decimals).transact({"from": w3.eth.accounts[0]})
    address = w3.eth.wait_for_transaction_receipt(tx_hash)["contractAddress"]
    assert address is not None
    return w3.eth.contract(address=address, abi=artifact["abi"])


@pytest.fixture
def chain(anvil: Anvil) -> Chain:
    """A market deployed for this test."""
    return make_chain(anvil.url)


@pytest.fixture
def own_anvil() -> Iterator[Anvil]:
    """A node of its own, for tests that stop it."""
    node = Anvil()
    yield node
    node.stop()


def market_entry(
    chain: Chain,
    rpc_url: str,
    account: LocalAccount,
    *,
    trading: bool = True,
    meter: str | None = None,
    options: dict[str, Any] | None = None,
    contract: str | None = None,
) -> MockConfigEntry:
    """A config entry as the config flow would create it (for `contract`, by default the chain's market)."""
    contract = contract or chain.market.address
    data: dict[str, Any] = {
        CONF_RPC_URL: rpc_url,
        CONF_CONTRACT_ADDRESS: contract,
        CONF_ACCOUNT: account.address,
        CONF_CHAIN_ID: chain.domain.chain_id,
        CONF_START_BLOCK: chain.w3.eth.block_number,
    }
    if trading:
        data[CONF_PRIVATE_KEY] = "0x" + bytes(account.key).hex()
    entry_options: dict[str, Any] = {CONF_SCAN_INTERVAL: 30, **(options or {})}
    if meter:
        entry_options[CONF_METER_ADDRESS] = meter
    return MockConfigEntry(
        domain=DOMAIN,
        title=f"Energy-Kart {account.address[:6]}…{account.address[-4:]}",
        unique_id=f"{chain.domain.chain_id}_{contract.lower()}_{account.address.lower()}",
        data=data,
        options=entry_options,
    )


def with_deployment_block(entry: MockConfigEntry, block: int) -> MockConfigEntry:
    """`entry` as the config flow creates it on a node that keeps every block's state (an archive
    node, as hosted providers are): knowing the block the market was deployed at."""
    return MockConfigEntry(
        domain=DOMAIN,
        title=entry.title,
        unique_id=entry.unique_id,
        data={**entry.data, CONF_DEPLOYMENT_BLOCK: block},
        options=dict(entry.options),
    )


def state(hass: HomeAssistant, entity_id: str) -> str:
    """The state of `entity_id`, which must exist."""
    found = hass.states.get(entity_id)
    assert found is not None, entity_id
    return found.state


async def setup_entry(hass: HomeAssistant, entry: MockConfigEntry) -> MockConfigEntry:
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


async def poll(hass: HomeAssistant, freezer: FrozenDateTimeFactory, seconds: int = 31) -> None:
    """Let the poll interval pass."""
    freezer.tick(timedelta(seconds=seconds))
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)


def reported_meter(chain: Chain, owner: str, wh: int = 1000) -> LocalAccount:
    """A meter registered to `owner` that has reported one reading (bids need one)."""
    meter = chain.new_meter(owner)
    chain.settle(chain.sign(meter, wh, chain.now()))
    return meter
