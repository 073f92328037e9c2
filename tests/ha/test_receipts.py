"""Waiting for a transaction's receipt on a node that does not mine on each transaction: the wait
backs off until the block comes, and gives up (the transaction is remembered, not sent again)
when no block comes in time."""

from __future__ import annotations

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError

from custom_components.energykart import transactions
from custom_components.energykart.const import DOMAIN
from devchain.anvil import Anvil

from .conftest import SELLER, make_chain, market_entry, setup_entry

SELL = {"energy": 1, "start_price": 0.001, "bidding_minutes": 10}


@pytest.fixture
def node(own_anvil: Anvil) -> Anvil:
    """A node of this test's own: its mining mode is changed."""
    return own_anvil.start()


async def test_receipt_waits_for_a_block_mined_later(hass: HomeAssistant, node: Anvil) -> None:
    """Blocks every second instead of on each transaction: the action returns once its block is mined."""
    chain = make_chain(node.url)
    entry = await setup_entry(hass, market_entry(chain, node.url, SELLER))
    chain.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    chain.w3.provider.make_request("evm_setIntervalMining", [1])  # type: ignore[arg-type]
    before = chain.market.functions.lastOfferId().call()
    answer = await hass.services.async_call(
        DOMAIN, "sell", {"config_entry_id": entry.entry_id, **SELL}, blocking=True, return_response=True
    )
    assert answer is not None
    assert chain.market.functions.lastOfferId().call() == before + 1


async def test_no_block_in_time_leaves_the_transaction_to_follow_up(
    hass: HomeAssistant, node: Anvil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No block within the receipt timeout: the user is told the transaction may still be mined,
    and the same action later follows it up (one offer, one transaction) instead of sending another."""
    chain = make_chain(node.url)
    entry = await setup_entry(hass, market_entry(chain, node.url, SELLER))
    chain.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    monkeypatch.setattr(transactions, "RECEIPT_TIMEOUT", 0.5)
    nonce = chain.w3.eth.get_transaction_count(SELLER.address)
    data = {"config_entry_id": entry.entry_id, **SELL}
    with pytest.raises(HomeAssistantError) as caught:
        await hass.services.async_call(DOMAIN, "sell", data, blocking=True, return_response=True)
    assert caught.value.translation_key == "transaction_unconfirmed"
    chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    await hass.services.async_call(DOMAIN, "sell", data, blocking=True, return_response=True)
    assert chain.w3.eth.get_transaction_count(SELLER.address) == nonce + 1
    assert chain.market.functions.lastOfferId().call() == 1
