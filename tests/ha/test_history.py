"""The market's history is read in bounded block ranges, as hosted RPC providers require."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast
from unittest.mock import patch

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.const import STATE_UNKNOWN
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import async_capture_events  # type: ignore[import-untyped]
from web3.exceptions import Web3RPCError
from web3.types import RPCEndpoint, RPCResponse

from custom_components.energykart import history as history_module
from custom_components.energykart.const import CONF_DEPLOYMENT_BLOCK, EVENT_OFFER_CREATED, REORG_WINDOW
from custom_components.energykart.history import narrower_range
from custom_components.energykart.provider import SessionJSONRPCProvider
from devchain.anvil import HISTORY_STATES, Anvil
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

SELLER_ID = "energy_kart_0x71be_5788"
PRICE = 10**14  # wei per kWh
RANGE = 50  # blocks per eth_getLogs, in place of LOG_RANGE
CALLS_PER_UPDATE = 2
GAP = 2 * RANGE + 7  # empty blocks between the market's events: more than a range


def mine(chain: Chain, blocks: int) -> None:
    answer = chain.w3.provider.make_request(RPCEndpoint("anvil_mine"), [hex(blocks)])
    assert "error" not in answer, answer


def deployment_block(chain: Chain) -> int:
    """The block of the market's first log: the one its constructor emits."""
    return int(chain.market.events.RegistrarTransferred().get_logs(from_block=0)[0]["blockNumber"])


class LimitedProvider:
    """What a hosted provider allows: eth_getLogs over at most RANGE blocks, given by number.

    Records every eth_getLogs as (fromBlock, toBlock, topics); a wider or open-ended one gets the
    provider's error instead of an answer.
    """

    def __init__(self) -> None:
        self.get_logs: list[tuple[int, int, str]] = []
        self.refused: list[dict[str, Any]] = []

    @staticmethod
    def _block(value: Any) -> int | None:
        return int(value, 16) if isinstance(value, str) and value.startswith("0x") else None

    def check(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The provider's error for `request`, or None when it passes."""
        if request["method"] != "eth_getLogs":
            return None
        query = request["params"][0]
        first, last = self._block(query.get("fromBlock")), self._block(query.get("toBlock"))
        if first is None or last is None or last - first + 1 > RANGE:
            self.refused.append(query)
            message = f"query exceeds max block range {RANGE}"
            return {"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32602, "message": message}}
        self.get_logs.append((first, last, json.dumps(query.get("topics"))))
        return None

    def blocks_read(self, since: int = 0) -> dict[str, list[int]]:
        """The blocks each filter was read for (in the calls from the `since`-th on)."""
        read: dict[str, list[int]] = {}
        for first, last, topics in self.get_logs[since:]:
            read.setdefault(topics, []).extend(range(first, last + 1))
        return read


@pytest.fixture
def node() -> Iterator[Anvil]:
    """A node of its own: mining is quick on a short chain."""
    with Anvil() as started:
        yield started


@pytest.fixture
def provider() -> Iterator[LimitedProvider]:
    limited = LimitedProvider()
    post = SessionJSONRPCProvider._post

    async def limited_post(self: SessionJSONRPCProvider, body: bytes) -> Any:
        request = json.loads(body)
        requests = request if isinstance(request, list) else [request]
        errors = [limited.check(item) for item in requests]
        if not any(errors):
            return await post(self, body)
        assert not isinstance(request, list), "eth_getLogs goes alone, not in a batch"
        return errors[0]

    with patch.object(SessionJSONRPCProvider, "_post", limited_post):
        yield limited


async def test_history_in_ranges(
    hass: HomeAssistant,
    node: Anvil,
    freezer: FrozenDateTimeFactory,
    monkeypatch: pytest.MonkeyPatch,
    provider: LimitedProvider,
) -> None:
    """A history longer than an update reads is caught up over several updates, in ranges the
    provider accepts, from the block the market was deployed at: the entities are available
    meanwhile, the totals are unknown until it is read and then exact, and every event after setup
    fires once."""
    monkeypatch.setattr(history_module, "LOG_RANGE", RANGE)
    monkeypatch.setattr(history_module, "LOG_CALLS_PER_UPDATE", CALLS_PER_UPDATE)
    chain = make_chain(node.url)
    start = deployment_block(chain)
    mine(chain, 2 * RANGE)  # before the entry is set up
    entry = with_deployment_block(market_entry(chain, node.url, SELLER), start)
    meter = reported_meter(chain, BUYER.address, wh=1000)
    # Before setup: two connections filled and ended, one half filled, each step more than a range apart.
    cumulative_wh = 1000
    for cap_wh, delivered_wh in ((500, 500), (400, 400), (600, 300)):
        chain.award(SELLER.address, BUYER.address, meter.address, cap_wh, PRICE)
        mine(chain, GAP)
        cumulative_wh += delivered_wh
        chain.settle(chain.sign(meter, cumulative_wh, chain.now() + 1))
        mine(chain, GAP)
    sold_wh = 500 + 400 + 300
    history = chain.w3.eth.block_number - start + 1
    assert history > 4 * CALLS_PER_UPDATE * RANGE  # more than four updates read

    created = async_capture_events(hass, EVENT_OFFER_CREATED)
    await setup_entry(hass, entry)
    updates = 1
    assert provider.get_logs[0][0] == start
    assert float(state(hass, f"sensor.{SELLER_ID}_wallet_balance")) > 99  # less the gas of the offers
    assert state(hass, f"sensor.{SELLER_ID}_energy_sold") == STATE_UNKNOWN
    assert state(hass, f"sensor.{SELLER_ID}_earnings") == STATE_UNKNOWN

    # While the history is read, offers are made: their events fire once each, when their logs are read.
    offers = [chain.create_offer(RIVAL.address, 100, PRICE, 3600)]
    mine(chain, GAP)
    offers.append(chain.create_offer(RIVAL.address, 100, PRICE, 3600))
    head = chain.w3.eth.block_number
    while state(hass, f"sensor.{SELLER_ID}_energy_sold") == STATE_UNKNOWN:
        assert updates < 20, "the history is never read"
        await poll(hass, freezer)
        updates += 1
    assert float(state(hass, f"sensor.{SELLER_ID}_energy_sold")) == sold_wh / 1000
    assert float(state(hass, f"sensor.{SELLER_ID}_earnings")) == pytest.approx(sold_wh * PRICE / 1000 / 10**18)
    await poll(hass, freezer)
    updates += 1
    assert [event.data["offer_id"] for event in created] == offers
    assert float(state(hass, f"sensor.{SELLER_ID}_energy_sold")) == sold_wh / 1000

    # Every block from the deployment on was read, once: for what the totals need up to the first
    # update's block, for the events that fire after it.
    read = provider.blocks_read()
    assert provider.refused == []
    head = chain.w3.eth.block_number
    assert set().union(*read.values()) == set(range(start, head + 1))
    assert all(len(blocks) == len(set(blocks)) for blocks in read.values())
    calls = len(provider.get_logs)
    print(f"{calls} eth_getLogs calls of at most {RANGE} blocks for {head - start + 1} blocks in {updates} updates")
    assert calls <= (head - start + 1) // RANGE + 3 * updates


def rpc_error(code: int, message: str, data: Any = None) -> Web3RPCError:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    response = cast(RPCResponse, {"jsonrpc": "2.0", "id": 1, "error": error})
    return Web3RPCError(repr(error), rpc_response=response)


# (code, message, data) of a refusal of 1,000 blocks -> (blocks to ask for instead, a limit of the range itself)
REFUSALS: list[tuple[int, str, Any, tuple[int, bool] | None]] = [
    (  # Alchemy: too many results, with the range that would do
        -32602,
        "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no limit on "
        "the response size, or you can request any block range with a cap of 10K logs in the response. Based on "
        "your parameters and the response size limit, this block range should work: [0x1f4, 0x2bb]",
        None,
        (200, False),
    ),
    (-32005, "query returned more than 10000 results", None, (500, False)),  # Infura
    (-32005, "query returned more than 10000 results", {"from": "0x64", "limit": 10000, "to": "0xc7"}, (100, False)),
    (-32000, "query exceeds max results 20000, retry with the range 100-399", None, (300, False)),  # reth, Erigon
    (-32602, "eth_getLogs is limited to a 10,000 range", None, (500, True)),  # QuickNode, over its limit only
    (-32602, "eth_getLogs and eth_newFilter are limited to a 500 range", None, (500, True)),
    (-32000, "exceed maximum block range: 1000", None, (999, True)),  # BSC, PublicNode
    (-32000, "query exceeds max block range 250", None, (250, True)),
    (-32602, "block range is too large", None, (500, True)),
    (-32000, "range too large", None, (500, True)),
    (-32600, "block range is too wide", None, (500, True)),  # Ankr
    (-32047, "Max range: 800", None, (800, True)),  # Cloudflare
    (-32000, "requested too many blocks from 0 to 999, maximum is set to 128", None, (128, True)),  # Avalanche
    (-32000, "logs matched by query exceeds limit of 10000", None, (500, False)),  # Arbitrum
    (-32603, "Query timeout exceeded. Consider reducing your block range.", None, (500, False)),
    (-32005, "limit exceeded", None, (500, True)),  # EIP-1474's code alone
    (-32005, "daily request count exceeded, request rate limited", None, None),  # throttled: not the range
    (429, "Too many requests, please slow down", None, None),
    (-32000, "header not found", None, None),
    (-32602, "invalid argument 0: hex string without 0x prefix", None, None),
]


@pytest.mark.parametrize(("code", "message", "data", "expected"), REFUSALS)
def test_narrower_range(code: int, message: str, data: Any, expected: tuple[int, bool] | None) -> None:
    """Each provider's refusal narrows the range as it says (its suggestion or its limit), or to half."""
    assert narrower_range(rpc_error(code, message, data), 1000) == expected
    assert narrower_range(rpc_error(-32005, "query returned more than 10000 results"), 1) is None


async def test_deployment_block(
    hass: HomeAssistant, node: Anvil, hass_storage: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The block the market was deployed at is found by bisection and kept in the entry; a node
    that keeps no state that old gives the entry's setup block instead, with a warning."""
    chain = make_chain(node.url)
    deployed = deployment_block(chain)
    mine(chain, 100)
    entry = await setup_entry(hass, market_entry(chain, node.url, SELLER))
    assert entry.data[CONF_DEPLOYMENT_BLOCK] == deployed
    assert await hass.config_entries.async_unload(entry.entry_id)
    stored = hass_storage[f"energykart.{entry.entry_id}.history"]["data"]
    assert stored["start"] == deployed
    await hass.config_entries.async_remove(entry.entry_id)
    await hass.async_block_till_done()
    assert f"energykart.{entry.entry_id}.history" not in hass_storage

    other = make_chain(node.url)
    mine(other, HISTORY_STATES + 50)  # more blocks than anvil keeps the state of
    pruned = market_entry(other, node.url, SELLER)
    oldest_state = other.w3.eth.block_number - HISTORY_STATES
    pruned_entry = await setup_entry(hass, pruned)
    assert CONF_DEPLOYMENT_BLOCK not in pruned_entry.data
    assert "keeps no state of blocks before" in caplog.text
    await hass.config_entries.async_unload(pruned_entry.entry_id)
    assert hass_storage[f"energykart.{pruned_entry.entry_id}.history"]["data"]["start"] == oldest_state


async def test_reorganisation_with_stored_totals(
    hass: HomeAssistant,
    node: Anvil,
    hass_storage: dict[str, Any],
    freezer: FrozenDateTimeFactory,
    provider: LimitedProvider,
) -> None:
    """A connection that ends in the last block is counted once: across a restart, when a
    reorganisation removes its end, when it ends again, and once its block is final."""
    chain = make_chain(node.url)
    meter = reported_meter(chain, BUYER.address, wh=1000)
    chain.award(SELLER.address, BUYER.address, meter.address, 500, PRICE)
    entry = await setup_entry(hass, market_entry(chain, node.url, SELLER))
    sold = f"sensor.{SELLER_ID}_energy_sold"
    assert float(state(hass, sold)) == 0
    reading = chain.sign(meter, 1500, chain.now() + 1)
    chain.settle(reading)  # fills the connection: it ends in this block
    await poll(hass, freezer)
    assert float(state(hass, sold)) == 0.5

    # A restart: the ended connection comes from the storage, no block is read again.
    assert await hass.config_entries.async_unload(entry.entry_id)
    ledger = hass_storage[f"energykart.{entry.entry_id}.history"]["data"]["ledger"]
    assert [recent[2:4] for recent in ledger["recent"]] == [["seller", "500"]]
    calls = len(provider.get_logs)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert len(provider.get_logs) == calls  # nothing new to read
    assert float(state(hass, sold)) == 0.5

    # The block with the end is replaced by an empty one: the connection is open again, undelivered.
    answer = chain.w3.provider.make_request(RPCEndpoint("anvil_reorg"), [1, []])
    assert "error" not in answer, answer
    await poll(hass, freezer)
    window = max(deployment_block(chain), chain.w3.eth.block_number - REORG_WINDOW)
    assert provider.get_logs[-1][0] == window  # the window, read again
    assert float(state(hass, sold)) == 0
    chain.settle(reading)
    await poll(hass, freezer)
    await poll(hass, freezer)
    assert float(state(hass, sold)) == 0.5

    # Once its block is final, it is folded into the stored totals: still counted once.
    mine(chain, REORG_WINDOW + 2)
    await poll(hass, freezer)
    assert await hass.config_entries.async_unload(entry.entry_id)
    ledger = hass_storage[f"energykart.{entry.entry_id}.history"]["data"]["ledger"]
    assert ledger["recent"] == []
    assert ledger["roles"] == []
    assert ledger["settled"] == ["500", "0", str(500 * PRICE // 1000), "0"]
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert float(state(hass, sold)) == 0.5
    assert float(state(hass, f"sensor.{SELLER_ID}_earnings")) == pytest.approx(500 * PRICE / 1000 / 10**18)


async def test_chain_went_back(
    hass: HomeAssistant, node: Anvil, freezer: FrozenDateTimeFactory, provider: LimitedProvider
) -> None:
    """A node restarted from an older state: its head is below the block the logs were read to.
    The window before its head is read again, and the totals follow the chain it has now."""
    chain = make_chain(node.url)
    meter = reported_meter(chain, BUYER.address, wh=1000)
    chain.award(SELLER.address, BUYER.address, meter.address, 500, PRICE)
    entry = await setup_entry(hass, market_entry(chain, node.url, SELLER))
    snapshot = chain.w3.provider.make_request(RPCEndpoint("evm_snapshot"), [])["result"]
    chain.settle(chain.sign(meter, 1500, chain.now() + 1))
    mine(chain, 5)
    await poll(hass, freezer)
    assert float(state(hass, f"sensor.{SELLER_ID}_energy_sold")) == 0.5
    answer = chain.w3.provider.make_request(RPCEndpoint("evm_revert"), [snapshot])
    assert answer.get("result") is True, answer
    await poll(hass, freezer)
    head = chain.w3.eth.block_number
    assert provider.get_logs[-1][:2] == (max(deployment_block(chain), head - REORG_WINDOW), head)
    assert float(state(hass, f"sensor.{SELLER_ID}_energy_sold")) == 0
    assert entry.runtime_data.last_update_success
