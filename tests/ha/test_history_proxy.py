"""A real chain's history behind a hosted provider's limits.

A JSON-RPC proxy (aiohttp, on a free 127.0.0.1 port) stands in front of a real anvil and enforces
what hosted providers enforce: at most 1,000 blocks and at most 10,000 results per eth_getLogs,
refused with the provider's own error text. Behind it: a market with 50,000 blocks of history and
more than 5,000 of its events.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from freezegun.api import FrozenDateTimeFactory
from homeassistant.const import STATE_UNKNOWN
from homeassistant.core import HomeAssistant
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from web3.types import RPCEndpoint

from custom_components.energykart.client import EnergyKartClient
from custom_components.energykart.history import LOG_RANGE, MARKET_EVENTS
from devchain.anvil import Anvil, free_port
from oracle.readings import SignedReading
from tests.chain import Chain

from .conftest import (
    BUYER,
    RIVAL,
    SELLER,
    make_chain,
    market_entry,
    poll,
    reported_meter,
    setup_entry,
    state,
    with_deployment_block,
)

BUYER_ID = "energy_kart_0xfabb_694a"
PRICE = 10**14  # wei per kWh
BLOCKS = 50_000
SKIPPED_PER_SETTLE = 5_500  # readings in one settle the contract skips, each with a ReadingSkipped event
MAX_BLOCKS = 1_000
MAX_RESULTS = 10_000


def _hex(block: int) -> str:
    return hex(block)


# How hosted providers refuse an eth_getLogs: (code, message) for a range of `blocks` blocks from
# `first` over the limit, or for `results` results over the limit where the blocks from `first`
# to `fits` would do.
@dataclass(frozen=True)
class Refusals:
    too_many_blocks: Callable[[int, int], tuple[int, str, Any]]  # (first, limit) -> code, message, data
    too_many_results: Callable[[int, int, int], tuple[int, str, Any]]  # (first, fits, limit)


PROVIDERS: dict[str, Refusals] = {
    "alchemy": Refusals(
        lambda first, limit: (
            -32600,
            f"Under the Free tier plan, you can make eth_getLogs requests with up to a {limit} block range. "
            f"Based on your parameters, this block range should work: [{_hex(first)}, {_hex(first + limit - 1)}]",
            None,
        ),
        lambda first, fits, limit: (
            -32602,
            "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no "
            f"limit on the response size, or you can request any block range with a cap of {limit // 1000}K logs "
            f"in the response. Based on your parameters and the response size limit, this block range should "
            f"work: [{_hex(first)}, {_hex(fits)}]",
            None,
        ),
    ),
    "infura": Refusals(
        lambda first, limit: (-32005, f"query returned more than {limit} results", None),
        lambda first, fits, limit: (
            -32005,
            f"query returned more than {limit} results",
            {"from": _hex(first), "limit": limit, "to": _hex(fits)},
        ),
    ),
    "quicknode": Refusals(
        lambda first, limit: (-32602, f"eth_getLogs is limited to a {limit:,} range", None),
        lambda first, fits, limit: (-32602, "block range is too large", None),
    ),
    "bsc": Refusals(
        lambda first, limit: (-32000, f"exceed maximum block range: {limit}", None),
        lambda first, fits, limit: (-32005, f"query returned more than {limit} results", None),
    ),
    "erigon": Refusals(
        lambda first, limit: (-32000, f"query exceeds max block range {limit}", None),
        lambda first, fits, limit: (
            -32000,
            f"query exceeds max results {limit}, retry with the range {first}-{fits}",
            None,
        ),
    ),
    "ankr": Refusals(
        lambda first, limit: (-32600, "block range is too wide", None),
        lambda first, fits, limit: (-32600, "query exceeds max results", None),
    ),
    "cloudflare": Refusals(
        lambda first, limit: (-32047, f"Max range: {limit}", None),
        lambda first, fits, limit: (-32000, "range too large", None),
    ),
    "arbitrum": Refusals(
        lambda first, limit: (-32000, "block range too large", None),
        lambda first, fits, limit: (-32000, f"logs matched by query exceeds limit of {limit}", None),
    ),
}


@dataclass
class HostedProvider:
    """The proxy: forwards JSON-RPC to anvil, and refuses an eth_getLogs the way `refusals` do
    over more than `max_blocks` blocks or with more than `max_results` results."""

    upstream: str
    refusals: Refusals
    max_blocks: int = MAX_BLOCKS
    max_results: int = MAX_RESULTS
    calls: Counter[str] = field(default_factory=Counter)
    get_logs: list[tuple[int, int]] = field(default_factory=list)  # the ranges answered
    refused: int = 0
    requests: int = 0  # HTTP requests: a batch is one
    url: str = ""
    _session: aiohttp.ClientSession | None = None
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._runner is not None
        assert self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    def counts(self) -> dict[str, int]:
        return dict(sorted(self.calls.items()))

    async def _forward(self, body: Any) -> Any:
        assert self._session is not None
        async with self._session.post(self.upstream, json=body) as response:
            return await response.json()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests += 1
        items = body if isinstance(body, list) else [body]
        self.calls.update(item["method"] for item in items)
        if isinstance(body, list):
            assert all(item["method"] != "eth_getLogs" for item in body), "eth_getLogs goes alone"
            return web.json_response(await self._forward(body))
        if body["method"] != "eth_getLogs":
            return web.json_response(await self._forward(body))
        query = body["params"][0]
        first, last = int(query["fromBlock"], 16), int(query["toBlock"], 16)
        if last - first + 1 > self.max_blocks:
            return self._refuse(body, *self.refusals.too_many_blocks(first, self.max_blocks))
        answer = await self._forward(body)
        logs = answer.get("result") or []
        if len(logs) > self.max_results:
            fits = int(logs[self.max_results]["blockNumber"], 16) - 1
            return self._refuse(body, *self.refusals.too_many_results(first, max(first, fits), self.max_results))
        self.get_logs.append((first, last))
        return web.json_response(answer)

    def _refuse(self, body: dict[str, Any], code: int, message: str, data: Any) -> web.Response:
        self.refused += 1
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": error})


def rpc(chain: Chain, method: str, *params: Any) -> Any:
    answer = chain.w3.provider.make_request(RPCEndpoint(method), list(params))
    assert "error" not in answer, answer
    return answer["result"]


def mine(chain: Chain, blocks: int) -> None:
    """Empty blocks, in steps (anvil takes far longer for one anvil_mine of 50,000)."""
    while blocks > 0:
        rpc(chain, "anvil_mine", hex(min(blocks, 5000)))
        blocks -= 5000


def send_early(chain: Chain, reading: SignedReading) -> None:
    """A relayer whose meter's clock runs ahead sends its reading SKIPPED_PER_SETTLE times in one
    settle: the contract skips each one (FutureTimestamp) with a ReadingSkipped event."""
    batch = [reading.as_tuple()] * SKIPPED_PER_SETTLE
    tx_hash = chain.market.functions.settle(batch).transact({"from": chain.accounts[-1], "gas": 29_000_000})
    assert chain.w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 1


@dataclass
class History:
    chain: Chain
    node: Anvil
    deployed: int
    burst: int  # the first of two blocks with SKIPPED_PER_SETTLE events each that the integration does not need
    events: int  # in those two blocks


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    """A market with BLOCKS blocks of history: the buyer's connections, ended and open, far apart,
    and more than 10,000 events in one range of 1,000 blocks that the integration does not need."""
    import pytest_socket

    pytest_socket.enable_socket()  # module fixtures run while the Home Assistant plugin blocks sockets
    pytest_socket.socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    # The contract is compiled for cancun; anvil's default (prague) mines each block slower the
    # longer the chain (50,000 blocks: minutes instead of seconds).
    with Anvil(extra_args=("--hardfork", "cancun")) as node:
        chain = make_chain(node.url)
        deployed = int(chain.market.events.RegistrarTransferred().get_logs(from_block=0)[0]["blockNumber"])
        meter = reported_meter(chain, BUYER.address, wh=1000)
        mine(chain, 10_000)
        chain.award(SELLER.address, BUYER.address, meter.address, 500, PRICE)
        reading = chain.sign(meter, 1500, chain.now() + 1)
        chain.settle(reading)  # fills and ends the first connection
        mine(chain, 10_000)
        burst = chain.w3.eth.block_number + 1
        for _ in range(2):
            send_early(chain, chain.sign(meter, 1600, chain.now() + 10**6))
        chain.award(SELLER.address, BUYER.address, meter.address, 800, 2 * PRICE)
        outbid_offer = chain.create_offer(SELLER.address, 100, PRICE, 3600)
        chain.place_bid(outbid_offer, BUYER.address, meter.address, PRICE)
        chain.place_bid(outbid_offer, RIVAL.address, reported_meter(chain, RIVAL.address).address, 2 * PRICE)
        mine(chain, 10_000)
        chain.settle(chain.sign(meter, 1800, chain.now() + 2))  # 300 of the second connection's 800
        mine(chain, BLOCKS - chain.w3.eth.block_number)
        burst_logs = chain.w3.eth.get_logs({"address": chain.market.address, "fromBlock": burst, "toBlock": burst + 1})
        yield History(chain=chain, node=node, deployed=deployed, burst=burst, events=len(burst_logs))


def bought(chain: Chain, account: str) -> tuple[int, int]:
    """Energy bought and money spent by `account`, straight from anvil: its connections' views."""
    opened = chain.market.events.ConnectionOpened().get_logs(from_block=0, argument_filters={"buyer": account})
    views = [chain.connection(log["args"]["id"]) for log in opened]
    return sum(view["deliveredWh"] for view in views), sum(view["paidWei"] for view in views)


async def test_history_behind_a_hosted_provider(
    hass: HomeAssistant,
    hass_storage: dict[str, Any],
    history: History,
    freezer: FrozenDateTimeFactory,
) -> None:
    """Setup finishes and the history is read in ranges the provider accepts, in a bounded number
    of calls; a restart reads no block again; the totals are exact."""
    chain = history.chain
    assert chain.w3.eth.block_number >= BLOCKS
    assert history.events >= 2 * SKIPPED_PER_SETTLE > MAX_RESULTS
    proxy = HostedProvider(history.node.url, PROVIDERS["alchemy"])
    await proxy.start()
    try:
        # Not filtered, the events of one range are more than the provider answers.
        query = {"address": chain.market.address, "fromBlock": hex(history.burst), "toBlock": hex(history.burst + 999)}
        request = {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [query]}
        async with async_get_clientsession(hass).post(proxy.url, json=request) as response:
            unfiltered = await response.json()
        assert "Log response size exceeded" in unfiltered["error"]["message"]
        proxy.calls.clear()
        proxy.refused = proxy.requests = 0

        entry = with_deployment_block(market_entry(chain, proxy.url, BUYER), history.deployed)
        await setup_entry(hass, entry)
        updates = 1
        while state(hass, f"sensor.{BUYER_ID}_energy_bought") == STATE_UNKNOWN:
            assert updates < 10, "the history is never read"
            await poll(hass, freezer)
            updates += 1
        head = chain.w3.eth.block_number
        blocks = head - history.deployed + 1
        first_calls = proxy.counts()
        print(
            f"first setup: {updates} updates for {blocks} blocks; {proxy.requests} HTTP requests; calls {first_calls}"
        )
        # One eth_getLogs per LOG_RANGE blocks for the history, and at most two per update (the
        # market's events and the account's) for the blocks that came meanwhile: none was refused.
        assert proxy.refused == 0
        assert first_calls["eth_getLogs"] <= -(-blocks // LOG_RANGE) + 2 * updates
        assert proxy.requests <= first_calls["eth_getLogs"] + 10 * updates
        bought_wh, spent = bought(chain, BUYER.address)
        assert (bought_wh, spent) == (500 + 300, 500 * PRICE // 1000 + 300 * 2 * PRICE // 1000)
        assert float(state(hass, f"sensor.{BUYER_ID}_energy_bought")) == bought_wh / 1000
        assert float(state(hass, f"sensor.{BUYER_ID}_spending")) == pytest.approx(spent / 10**18)

        # A restart (unload, set up again with the same storage) reads no block it has read.
        assert await hass.config_entries.async_unload(entry.entry_id)
        stored = hass_storage[f"energykart.{entry.entry_id}.history"]["data"]
        cursor = stored["ledger"]["cursor"]
        assert cursor == head
        proxy.calls.clear()
        proxy.get_logs.clear()
        proxy.requests = 0
        rpc(chain, "anvil_mine", hex(5))
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        restart_calls = proxy.counts()
        print(f"restart: {proxy.requests} HTTP requests; calls {restart_calls}; eth_getLogs ranges {proxy.get_logs}")
        assert proxy.get_logs == [(cursor + 1, cursor + 5)]
        assert float(state(hass, f"sensor.{BUYER_ID}_energy_bought")) == bought_wh / 1000
        assert float(state(hass, f"sensor.{BUYER_ID}_spending")) == pytest.approx(spent / 10**18)
        assert await hass.config_entries.async_unload(entry.entry_id)
    finally:
        await proxy.stop()


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_each_provider_refusal(hass: HomeAssistant, anvil: Anvil, provider: str) -> None:
    """Refused with each provider's text, for too many blocks and for too many results, the reader
    narrows its ranges until the provider answers, and reads every event exactly once."""
    chain = make_chain(anvil.url)
    first = chain.w3.eth.block_number
    for _ in range(28):  # one a block
        chain.create_offer(RIVAL.address, 100, PRICE, 3600)
    last = chain.w3.eth.block_number
    proxy = HostedProvider(anvil.url, PROVIDERS[provider], max_blocks=10, max_results=5)
    await proxy.start()
    try:
        client = EnergyKartClient(async_get_clientsession(hass), proxy.url, chain.market.address, SELLER.address)
        read: list[tuple[str, ...]] = []
        done = first - 1
        while done < last:
            logs = await client.read_logs(done + 1, last, first)
            read += [event.key for event in logs.events]
            done = logs.last_block
    finally:
        await proxy.stop()
    assert proxy.refused >= 2
    expected = chain.market.events.OfferCreated().get_logs(from_block=first, to_block=last)
    assert "OfferCreated" in MARKET_EVENTS
    assert len(read) == len(set(read)) == len(expected) == 28
    assert all(last_block - first_block + 1 <= 10 for first_block, last_block in proxy.get_logs)
    print(provider, json.dumps(proxy.counts()))
