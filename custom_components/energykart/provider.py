"""JSON-RPC over Home Assistant's shared aiohttp session.

web3's own AsyncHTTPProvider keeps a private session and thread pool; this provider instead posts
through the one ``aiohttp.ClientSession`` it is given, which it never closes.
"""

from __future__ import annotations

from typing import Any, cast

import aiohttp
from web3.exceptions import ProviderConnectionError
from web3.providers.async_base import AsyncJSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

_HEADERS = {"Content-Type": "application/json"}


class SessionJSONRPCProvider(AsyncJSONBaseProvider):
    """JSON-RPC over HTTP through an injected aiohttp session; supports batches."""

    def __init__(self, endpoint_uri: str, session: aiohttp.ClientSession, timeout: float = 10.0) -> None:
        super().__init__()
        self.endpoint_uri = endpoint_uri
        self._session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _post(self, body: bytes) -> Any:
        try:
            async with self._session.post(
                self.endpoint_uri, data=body, headers=_HEADERS, timeout=self.timeout
            ) as response:
                response.raise_for_status()
                raw = await response.read()
            return self.decode_rpc_response(raw)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise ProviderConnectionError(f"JSON-RPC request failed: {err}") from err

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        return cast(RPCResponse, await self._post(self.encode_rpc_request(method, params)))

    async def make_batch_request(self, requests: list[tuple[RPCEndpoint, Any]]) -> list[RPCResponse] | RPCResponse:
        response = await self._post(self.encode_batch_rpc_request(requests))
        if not isinstance(response, list):
            return cast(RPCResponse, response)  # one error for the whole batch
        return sorted(cast(list[RPCResponse], response), key=lambda item: int(item.get("id") or 0))

    async def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            response = await self.make_request(RPCEndpoint("eth_chainId"), [])
        except ProviderConnectionError:
            if show_traceback:
                raise
            return False
        return "result" in response
