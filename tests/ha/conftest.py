"""Fixtures of the integration's tests: a fresh market per test on the session's anvil."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
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
from web3.types import RPCEndpoint

from custom_components.energykart.const import (
    CONF_ACCOUNT,
    CONF_CHAIN_ID,
    CONF_CONTRACT_ADDRESS,
    CONF_METER_ADDRESS,
    CONF_PRIVATE_KEY,
    CONF_RPC_URL,
    CONF_SCAN_INTERVAL,
    CONF_START_BLOCK,
    DOMAIN,
)
from devchain.anvil import DEFAULT_MNEMONIC, Anvil
from devchain.deploy import deploy_market
from oracle.readings import Domain
from tests.chain import Chain

Account.enable_unaudited_hdwallet_features()
KEYS: list[LocalAccount] = [
    Account.from_mnemonic(DEFAULT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(20)
]
SELLER, BUYER, RIVAL = KEYS[11], KEYS[12], KEYS[13]
START_BALANCE = 100 * 10**18


@pytest.fixture(autouse=True)
def auto_enable(enable_custom_integrations: None, socket_enabled: None) -> None:
    """Load custom_components/ and let the tests reach anvil on 127.0.0.1."""


def make_chain(url: str) -> Chain:
    w3 = Web3(Web3.HTTPProvider(url))
    registrar = w3.eth.accounts[0]
    market = deploy_market(w3, registrar)
    for account in (SELLER, BUYER, RIVAL):
        w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [account.address, hex(START_BALANCE)])
    return Chain(
        w3=w3,
        market=market,
        registrar=registrar,
        accounts=list(w3.eth.accounts),
        domain=Domain(chain_id=w3.eth.chain_id, contract=market.address),
    )


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
) -> MockConfigEntry:
    """A config entry as the config flow would create it."""
    contract = chain.market.address
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
