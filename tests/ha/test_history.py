"""The market's history is read in bounded block ranges, as hosted RPC providers require."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.const import STATE_UNKNOWN
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import async_capture_events  # type: ignore[import-untyped]
from web3.types import RPCEndpoint

from custom_components.energykart import client as client_module
from custom_components.energykart.const import CONF_START_BLOCK, EVENT_OFFER_CREATED, REORG_WINDOW
from custom_components.energykart.provider import SessionJSONRPCProvider
from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import BUYER, RIVAL, SELLER, make_chain, market_entry, poll, reported_meter, setup_entry, state

SELLER_ID = "energy_kart_0x71be_5788"
PRICE = 10**14  # wei per kWh
RANGE = 50  # blocks per eth_getLogs, in place of LOG_RANGE
RANGES_PER_UPDATE = 2
GAP = 2 * RANGE + 7  # empty blocks between the market's events: more than a range


def mine(chain: Chain, blocks: int) -> None:
    answer = chain.w3.provider.make_request(RPCEndpoint("anvil_mine"), [hex(blocks)])
    assert "error" not in answer, answer


class LimitedProvider:
    """What a hosted provider allows: eth_getLogs over at most RANGE blocks, given by number.

    Records every eth_getLogs as (fromBlock, toBlock); a wider or open-ended one gets the provider's
    error instead of an answer.
    """

    def __init__(self) -> None:
        self.get_logs: list[tuple[int, int]] = []
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
        self.get_logs.append((first, last))
        return None

    @property
    def blocks_read(self) -> list[int]:
        return sorted(block for first, last in self.get_logs for block in range(first, last + 1))


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
    provider accepts, from the entry's start block: the entities are available meanwhile, the
    totals are unknown until it is read and then exact, and every event after setup fires once."""
    monkeypatch.setattr(client_module, "LOG_RANGE", RANGE)
    monkeypatch.setattr(client_module, "LOG_RANGES_PER_UPDATE", RANGES_PER_UPDATE)
    chain = make_chain(node.url)
    entry = market_entry(chain, node.url, SELLER)
    start = entry.data[CONF_START_BLOCK]
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
    assert history > 4 * RANGES_PER_UPDATE * RANGE  # more than four updates read

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

    # Every block from the start block on was read; again only the few of the reorganisation window.
    read = provider.blocks_read
    assert provider.refused == []
    assert set(read) == set(range(start, chain.w3.eth.block_number + 1))
    assert len(read) - len(set(read)) <= updates * (REORG_WINDOW + 1)
    calls = len(provider.get_logs)
    print(f"{calls} eth_getLogs calls of at most {RANGE} blocks for {head - start + 1} blocks in {updates} updates")
    assert calls <= (head - start + 1) // RANGE + 2 * updates
