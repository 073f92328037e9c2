"""What starts reauthentication: a stored key that is not the account's, and a node that refuses
the account's transactions as not authorised (a permissioned chain's allow-list)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from homeassistant.config_entries import SOURCE_REAUTH, ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError

from custom_components.energykart.const import CONF_PRIVATE_KEY, DOMAIN
from custom_components.energykart.transactions import refuses_key
from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import BUYER, SELLER, market_entry, setup_entry

# Besu's answer to a transaction whose sender its account permissioning does not allow.
BESU_REFUSAL = {"code": -32007, "message": "Sender account not authorized to send transactions"}


def key_hex(account: Any) -> str:
    return "0x" + bytes(account.key).hex()


def reauth_flows(hass: HomeAssistant, entry_id: str) -> list[Any]:
    return [
        flow
        for flow in hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        if flow["context"]["source"] == SOURCE_REAUTH and flow["context"]["entry_id"] == entry_id
    ]


def state_of(entry: Any) -> ConfigEntryState:
    """The entry's state now (a call, so that type checkers do not carry an earlier assert over)."""
    return entry.state  # type: ignore[no-any-return]


class AllowListNode:
    """A JSON-RPC proxy in front of anvil that refuses every raw transaction, as a permissioned node
    refuses a sender that is not on its allow-list; everything else is anvil's answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.refused = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body, dict) and body.get("method") == "eth_sendRawTransaction":
            self.refused += 1
            return web.json_response({"jsonrpc": "2.0", "id": body.get("id"), "error": BESU_REFUSAL})
        assert self._session is not None
        async with self._session.post(self.upstream, json=body) as answer:
            return web.json_response(json.loads(await answer.text()))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@pytest.fixture
async def allow_list_node(anvil: Anvil) -> AsyncIterator[AllowListNode]:
    node = AllowListNode(anvil.url)
    await node.start()
    yield node
    await node.stop()


async def test_key_of_another_account_starts_reauth(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """An entry whose stored key is not its account's does not load (nothing could be signed for the
    account), starts reauthentication, and loads once the account's key is entered."""
    entry = market_entry(chain, anvil.url, SELLER)
    entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_PRIVATE_KEY: key_hex(BUYER)})
    assert not await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert entry.error_reason_translation_key == "key_mismatch"
    (flow,) = reauth_flows(hass, entry.entry_id)
    result = await hass.config_entries.flow.async_configure(flow["flow_id"], {CONF_PRIVATE_KEY: key_hex(SELLER)})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reauth_successful"
    await hass.async_block_till_done()
    assert state_of(entry) is ConfigEntryState.LOADED
    assert entry.data[CONF_PRIVATE_KEY] == key_hex(SELLER)


async def test_node_refusing_the_account_starts_reauth(
    hass: HomeAssistant, chain: Chain, allow_list_node: AllowListNode
) -> None:
    """A node that refuses the account's transactions as not authorised: the action fails with a
    message saying so, nothing is sent, and reauthentication starts (once, however often it fails)."""
    entry = await setup_entry(hass, market_entry(chain, allow_list_node.url, SELLER))
    nonce = chain.w3.eth.get_transaction_count(SELLER.address)
    sell = {"config_entry_id": entry.entry_id, "energy": 1, "start_price": 0.001, "bidding_minutes": 10}
    for _ in range(2):
        with pytest.raises(HomeAssistantError) as caught:
            await hass.services.async_call(DOMAIN, "sell", sell, blocking=True, return_response=True)
        assert caught.value.translation_key == "key_rejected"
        assert caught.value.translation_placeholders == {"message": BESU_REFUSAL["message"]}
    await hass.async_block_till_done()
    assert allow_list_node.refused == 2
    assert chain.w3.eth.get_transaction_count(SELLER.address) == nonce
    assert len(reauth_flows(hass, entry.entry_id)) == 1
    assert entry.state is ConfigEntryState.LOADED  # reads go on while the user sees to the key


@pytest.mark.parametrize(
    ("message", "about_the_key"),
    [
        ("Sender account not authorized to send transactions", True),  # Besu
        ("account not permitted to send transactions", True),  # GoQuorum
        ("sender not whitelisted", True),
        ("nonce too low", False),
        ("insufficient funds for gas * price + value", False),
        ("replacement transaction underpriced", False),
    ],
)
def test_which_refusals_are_about_the_key(message: str, about_the_key: bool) -> None:
    """Only a refusal of the sender starts reauthentication; a refusal of the transaction does not."""
    assert refuses_key(message) is about_the_key
