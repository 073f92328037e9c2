"""The JSON-RPC provider on Home Assistant's shared session, as web3 asks of a provider."""

from __future__ import annotations

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from web3.exceptions import ProviderConnectionError

from custom_components.energykart.provider import SessionJSONRPCProvider
from devchain.anvil import Anvil, free_port


async def test_connected_and_refused_batches(hass: HomeAssistant, anvil: Anvil) -> None:
    """is_connected tells a node from a closed port; a batch the node refuses as a whole comes
    back as its one error, for web3 to raise."""
    session = async_get_clientsession(hass)
    node = SessionJSONRPCProvider(anvil.url, session)
    assert await node.is_connected()
    refused = await node.make_batch_request([])
    assert isinstance(refused, dict)
    assert refused["error"]["code"] == -32600

    closed = SessionJSONRPCProvider(f"http://127.0.0.1:{free_port()}", session)
    assert not await closed.is_connected()
    with pytest.raises(ProviderConnectionError):
        await closed.is_connected(show_traceback=True)
