"""Faults: the node failing during an action, a revoked meter, a reorganisation of the last blocks."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from unittest.mock import patch

import aiohttp
import pytest
from eth_typing import HexStr
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.switch.const import DOMAIN as SWITCH_DOMAIN
from homeassistant.const import ATTR_ENTITY_ID, SERVICE_TURN_OFF, STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import device_registry as dr
from pytest_homeassistant_custom_component.common import (  # type: ignore[import-untyped]
    MockConfigEntry,
    async_capture_events,
)
from web3.types import RPCEndpoint, Wei

from custom_components.energykart.const import DOMAIN, EVENT_OFFER_AWARDED, EVENT_OFFER_CREATED, EVENT_OUTBID
from custom_components.energykart.provider import SessionJSONRPCProvider
from devchain.anvil import Anvil
from tests.chain import Chain

from .conftest import (
    BUYER,
    RIVAL,
    SELLER,
    deploy_plain_token,
    make_chain,
    make_token_market,
    market_entry,
    poll,
    reported_meter,
    setup_entry,
    state,
)

SELLER_ID = "energy_kart_0x71be_5788"
BUYER_ID = "energy_kart_0xfabb_694a"
ZERO = "0x0000000000000000000000000000000000000000"


async def call(hass: HomeAssistant, service: str, data: dict[str, Any]) -> Any:
    return await hass.services.async_call(DOMAIN, service, data, blocking=True, return_response=True)


def nonce(chain: Chain, account: str) -> int:
    return int(chain.w3.eth.get_transaction_count(account))  # type: ignore[arg-type]


@contextmanager
def fault_at(method: str, fault: Callable[[], None], *, before: bool) -> Iterator[None]:
    """Run `fault` once, just before the integration posts a JSON-RPC call of `method` or just after its answer."""
    post = SessionJSONRPCProvider._post
    done = False

    async def faulty_post(provider: SessionJSONRPCProvider, body: bytes) -> Any:
        nonlocal done
        request = json.loads(body)
        hit = not done and method in {item["method"] for item in (request if isinstance(request, list) else [request])}
        if hit and before:
            done = True
            fault()
        answer = await post(provider, body)
        if hit and not before:
            done = True
            fault()
        return answer

    with patch.object(SessionJSONRPCProvider, "_post", faulty_post):
        yield
    assert done, f"{method} was never called"


class RestartableNode:
    """An anvil that keeps its chain in a state file, so it can be stopped and started on the same port."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.node = Anvil(extra_args=("--state", str(state_file))).start()

    @property
    def url(self) -> str:
        return self.node.url

    def stop(self) -> None:
        self.node.stop()

    def start(self) -> None:
        self.node = Anvil(port=self.node.port, extra_args=("--state", str(self.state_file))).start()

    def pause(self) -> None:
        """The process stops answering; connections are still accepted by the kernel."""
        os.killpg(self._pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self._pid(), signal.SIGCONT)

    def _pid(self) -> int:
        proc = self.node._proc
        assert proc is not None
        return proc.pid


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RestartableNode]:
    restartable = RestartableNode(tmp_path / "anvil-state.json")
    yield restartable
    restartable.stop()


def translation(err: pytest.ExceptionInfo[HomeAssistantError]) -> tuple[str | None, dict[str, str]]:
    assert err.value.translation_domain == DOMAIN
    return err.value.translation_key, dict(err.value.translation_placeholders or {})


async def test_node_stops_answering_after_broadcast(hass: HomeAssistant, node: RestartableNode) -> None:
    """The node takes the sale, then stops answering: the error names the transaction; a retry adopts it.

    No frozen clock here: the request timeout runs on the event loop's clock.
    """
    chain = make_chain(node.url)
    seller = await setup_entry(hass, market_entry(chain, node.url, SELLER))
    provider = cast(SessionJSONRPCProvider, seller.runtime_data.client.w3.provider)
    provider.timeout = aiohttp.ClientTimeout(total=0.5)
    sell = {"config_entry_id": seller.entry_id, "energy": 1, "start_price": 0.001, "bidding_minutes": 10}
    before = nonce(chain, SELLER.address)

    try:
        with fault_at("eth_sendRawTransaction", node.pause, before=False), pytest.raises(HomeAssistantError) as caught:
            await call(hass, "sell", sell)
    finally:
        node.resume()
    key, placeholders = translation(caught)
    assert key == "transaction_unconfirmed"
    tx_hash = placeholders["tx_hash"]
    assert tx_hash.startswith("0x")
    assert tx_hash in str(caught.value)
    assert nonce(chain, SELLER.address) == before + 1
    assert chain.market.functions.lastOfferId().call() == 1

    assert await call(hass, "sell", sell) == {"offer_id": 1}  # the same sale again: followed up, not resent
    assert nonce(chain, SELLER.address) == before + 1
    assert chain.market.functions.lastOfferId().call() == 1
    assert state(hass, f"sensor.{SELLER_ID}_open_offers") == "1"
    assert await call(hass, "sell", sell) == {"offer_id": 2}  # once confirmed, the same call is a new sale


async def test_node_stops_before_the_bid_reaches_it(
    hass: HomeAssistant, node: RestartableNode, freezer: FrozenDateTimeFactory
) -> None:
    """Down during the checks: nothing sent. Down as the bid goes out: unknown, so the retry sends the same one."""
    chain = make_chain(node.url)
    meter = reported_meter(chain, BUYER.address)
    offer_id = chain.create_offer(SELLER.address, 2000, 10**14)
    buyer = await setup_entry(hass, market_entry(chain, node.url, BUYER, meter=meter.address))
    bid = {"config_entry_id": buyer.entry_id, "offer_id": offer_id, "price": 0.0002}
    before = nonce(chain, BUYER.address)

    with fault_at("eth_estimateGas", node.stop, before=True), pytest.raises(HomeAssistantError) as caught:
        await call(hass, "bid", bid)
    assert translation(caught)[0] == "node_unreachable"
    assert "Try again" in str(caught.value)
    node.start()
    assert nonce(chain, BUYER.address) == before

    with fault_at("eth_sendRawTransaction", node.stop, before=True), pytest.raises(HomeAssistantError) as caught:
        await call(hass, "bid", bid)
    key, placeholders = translation(caught)
    assert key == "transaction_unconfirmed"
    node.start()
    await poll(hass, freezer)
    assert nonce(chain, BUYER.address) == before  # it never reached the node
    assert chain.offer(offer_id)["highestBidder"] == ZERO

    response = await call(hass, "bid", bid)  # broadcast again: the same signed transaction
    assert response == {"transaction_hash": placeholders["tx_hash"]}
    assert nonce(chain, BUYER.address) == before + 1
    assert chain.offer(offer_id)["highestBidder"] == BUYER.address
    assert float(state(hass, f"sensor.{BUYER_ID}_escrow_locked")) == 0.0004

    # The same bid once more is a new bid again, and the offer has moved on: refused before sending.
    with pytest.raises(ServiceValidationError) as refused:
        await call(hass, "bid", bid)
    assert refused.value.translation_key == "price_too_low"
    assert nonce(chain, BUYER.address) == before + 1


async def test_node_hangs_during_close_and_withdraw(hass: HomeAssistant, node: RestartableNode) -> None:
    """A node that stops answering mid-close; a lost withdrawal whose nonce another transaction took.

    No frozen clock here: the request timeout runs on the event loop's clock.
    """
    chain = make_chain(node.url)
    meter = reported_meter(chain, BUYER.address, wh=1000)
    chain.award(SELLER.address, BUYER.address, meter.address, 2000, 10**14)
    chain.settle(chain.sign(meter, 1500, chain.now() + 1))
    seller = await setup_entry(hass, market_entry(chain, node.url, SELLER))
    buyer = await setup_entry(hass, market_entry(chain, node.url, BUYER, meter=meter.address))
    switch = "switch.connection_1_buying_connection"
    assert state(hass, switch) == STATE_ON
    provider = cast(SessionJSONRPCProvider, buyer.runtime_data.client.w3.provider)
    provider.timeout = aiohttp.ClientTimeout(total=0.5)
    before = nonce(chain, BUYER.address)

    try:
        with fault_at("eth_sendRawTransaction", node.pause, before=False), pytest.raises(HomeAssistantError) as caught:
            await hass.services.async_call(SWITCH_DOMAIN, SERVICE_TURN_OFF, {ATTR_ENTITY_ID: switch}, blocking=True)
    finally:
        node.resume()
    key, placeholders = translation(caught)
    assert key == "transaction_unconfirmed"
    response = await call(hass, "close_connection", {"config_entry_id": buyer.entry_id, "connection_id": 1})
    assert response == {"transaction_hash": placeholders["tx_hash"]}
    assert nonce(chain, BUYER.address) == before + 1
    assert state(hass, switch) == STATE_OFF

    seller_nonce = nonce(chain, SELLER.address)
    withdraw = {"config_entry_id": seller.entry_id}
    with fault_at("eth_sendRawTransaction", node.stop, before=True), pytest.raises(HomeAssistantError) as caught:
        await call(hass, "withdraw", withdraw)
    assert translation(caught)[0] == "transaction_unconfirmed"
    node.start()
    # Another transaction takes the nonce the lost withdrawal was signed with: it can never be mined.
    await call(hass, "sell", {"config_entry_id": seller.entry_id, "energy": 1, "start_price": 0.001})
    lost = translation(caught)[1]["tx_hash"]
    with pytest.raises(HomeAssistantError) as caught:
        await call(hass, "withdraw", withdraw)
    assert translation(caught) == ("transaction_lost", {"tx_hash": lost})
    assert nonce(chain, SELLER.address) == seller_nonce + 1
    response = await call(hass, "withdraw", withdraw)  # forgotten: a new withdrawal
    assert response["transaction_hash"] != lost
    assert nonce(chain, SELLER.address) == seller_nonce + 2
    assert chain.credit(SELLER.address) == 0
    await seller.runtime_data.async_refresh()
    assert float(state(hass, f"sensor.{SELLER_ID}_withdrawable_credit")) == 0


async def test_token_bids_resumed(
    hass: HomeAssistant, node: RestartableNode, plain_token_artifact: dict[str, Any]
) -> None:
    """A token market: the node stops as a bid's approval goes out, so the retry broadcasts that
    approval again (never a second one) and then bids; no allowance is left either way.

    No frozen clock here: the request timeout runs on the event loop's clock.
    """
    market = make_token_market(node.url, deploy_plain_token(node.url, plain_token_artifact))
    chain = market.chain
    meter = reported_meter(chain, BUYER.address)
    offer_id = chain.create_offer(SELLER.address, 2000, market.units("0.25"))
    buyer = await setup_entry(hass, market_entry(chain, node.url, BUYER, meter=meter.address))
    bid = {"config_entry_id": buyer.entry_id, "offer_id": offer_id, "price": 0.3}
    before = nonce(chain, BUYER.address)

    with fault_at("eth_sendRawTransaction", node.stop, before=True), pytest.raises(HomeAssistantError) as caught:
        await call(hass, "bid", bid)
    key, placeholders = translation(caught)
    assert key == "transaction_unconfirmed"
    node.start()
    assert nonce(chain, BUYER.address) == before  # the approval never reached the node

    await call(hass, "bid", bid)
    approval = chain.w3.eth.get_transaction(HexStr(placeholders["tx_hash"]))
    assert (approval["to"], approval["nonce"]) == (market.token.address, before)
    assert nonce(chain, BUYER.address) == before + 2
    assert chain.offer(offer_id)["highestBidder"] == BUYER.address
    assert market.allowance(BUYER.address) == 0


async def test_token_bid_with_permit_resumed(hass: HomeAssistant, node: RestartableNode) -> None:
    """A bid with a permit whose receipt was lost is followed up with the same transaction (the
    same permit), not signed again.

    No frozen clock here: the request timeout runs on the event loop's clock.
    """
    market = make_token_market(node.url, decimals=6)
    chain = market.chain
    meter = reported_meter(chain, BUYER.address)
    offer_id = chain.create_offer(SELLER.address, 2000, market.units("0.25"))
    buyer = await setup_entry(hass, market_entry(chain, node.url, BUYER, meter=meter.address))
    provider = cast(SessionJSONRPCProvider, buyer.runtime_data.client.w3.provider)
    provider.timeout = aiohttp.ClientTimeout(total=0.5)
    bid = {"config_entry_id": buyer.entry_id, "offer_id": offer_id, "price": "0.3"}
    before = nonce(chain, BUYER.address)

    try:
        with fault_at("eth_sendRawTransaction", node.pause, before=False), pytest.raises(HomeAssistantError) as caught:
            await call(hass, "bid", bid)
    finally:
        node.resume()
    key, placeholders = translation(caught)
    assert key == "transaction_unconfirmed"
    assert nonce(chain, BUYER.address) == before + 1
    assert await call(hass, "bid", bid) == {"transaction_hash": placeholders["tx_hash"]}
    assert nonce(chain, BUYER.address) == before + 1
    assert chain.offer(offer_id)["highestBidder"] == BUYER.address
    assert market.allowance(BUYER.address) == 0


async def test_market_moves_before_the_broadcast(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """Between the checks and the broadcast, another wallet with the same key uses the nonce: the
    node refuses the bid, so nothing is out and the retry is a new bid. Or a rival outbids: the
    bid is mined and reverts. Both are reported; neither is taken for unconfirmed."""
    meter = reported_meter(chain, BUYER.address)
    rival_meter = reported_meter(chain, RIVAL.address)
    offer_id = chain.create_offer(SELLER.address, 2000, 10**14)
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    bid = {"config_entry_id": buyer.entry_id, "offer_id": offer_id, "price": 0.0002}
    before = nonce(chain, BUYER.address)

    def other_wallet() -> None:
        chain.w3.eth.send_transaction({"from": BUYER.address, "to": RIVAL.address, "value": Wei(1)})

    with fault_at("eth_sendRawTransaction", other_wallet, before=True), pytest.raises(HomeAssistantError) as caught:
        await call(hass, "bid", bid)
    assert translation(caught)[0] == "transaction_rejected"
    assert nonce(chain, BUYER.address) == before + 1  # the other wallet's transfer only
    await call(hass, "bid", bid)
    assert chain.offer(offer_id)["highestBidder"] == BUYER.address

    def rival_bids() -> None:
        chain.place_bid(offer_id, RIVAL.address, rival_meter.address, 5 * 10**14)

    with fault_at("eth_sendRawTransaction", rival_bids, before=True), pytest.raises(HomeAssistantError) as caught:
        await call(hass, "bid", {**bid, "price": 0.0003})
    assert translation(caught) == ("transaction_rejected", {"reason": "Reverted"})
    assert nonce(chain, BUYER.address) == before + 3  # mined, and reverted
    assert chain.offer(offer_id)["highestBidder"] == RIVAL.address


async def test_revoked_meter(hass: HomeAssistant, chain: Chain, anvil: Anvil, freezer: FrozenDateTimeFactory) -> None:
    """A revoked meter backs no new bid; its open connection stays visible and closable."""
    meter = reported_meter(chain, BUYER.address, wh=1000)
    chain.award(SELLER.address, BUYER.address, meter.address, 2000, 10**14)
    seller = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    buyer = await setup_entry(hass, market_entry(chain, anvil.url, BUYER, meter=meter.address))
    offer = await call(
        hass, "sell", {"config_entry_id": seller.entry_id, "energy": 1, "start_price": 0.0001, "bidding_minutes": 10}
    )

    chain.tx(chain.market.functions.revokeMeter(meter.address), chain.registrar)
    chain.settle(chain.sign(meter, 1500, chain.now() + 1))  # skipped: the meter is revoked
    await poll(hass, freezer)
    switch = "switch.connection_1_buying_connection"
    assert state(hass, switch) == STATE_ON
    assert state(hass, "binary_sensor.connection_1_buying_delivering") == STATE_ON
    assert float(state(hass, "sensor.connection_1_buying_delivered_energy")) == 0
    assert float(state(hass, f"sensor.{BUYER_ID}_wallet_balance")) > 0

    bid = {"config_entry_id": buyer.entry_id, "offer_id": offer["offer_id"], "price": 0.0002}
    before = nonce(chain, BUYER.address)
    with pytest.raises(ServiceValidationError) as caught:
        await call(hass, "bid", bid)
    assert caught.value.translation_key == "meter_not_registered"
    assert meter.address in str(caught.value)
    assert nonce(chain, BUYER.address) == before

    await hass.services.async_call(SWITCH_DOMAIN, SERVICE_TURN_OFF, {ATTR_ENTITY_ID: switch}, blocking=True)
    assert state(hass, switch) == STATE_OFF
    chain.travel(901)
    chain.tx(chain.market.functions.release(1), chain.registrar)
    await poll(hass, freezer)
    assert hass.states.get(switch) is None
    assert [device.name for device in dr.async_entries_for_config_entry(dr.async_get(hass), buyer.entry_id)] == [
        buyer.title
    ]

    # Registered again, to someone else: still no bid from this entry, with the other reason.
    chain.tx(chain.market.functions.registerMeter(meter.address, RIVAL.address), chain.registrar)
    with pytest.raises(ServiceValidationError) as caught:
        await call(hass, "bid", bid)
    assert caught.value.translation_key == "meter_not_owned"
    assert nonce(chain, BUYER.address) == before + 1  # only the close


def reorg(chain: Chain, depth: int, *transactions: dict[str, Any] | str) -> None:
    """Replace the last `depth` blocks with new ones holding `transactions` (all in the first)."""
    answer = chain.w3.provider.make_request(
        RPCEndpoint("anvil_reorg"), [depth, [[transaction, 0] for transaction in transactions]]
    )
    assert "error" not in answer, answer


def market_call(chain: Chain, function: Any, sender: str, value: int = 0) -> dict[str, Any]:
    """A transaction request for anvil_reorg (the sender is one of anvil's unlocked accounts)."""
    return {
        "from": sender,
        "to": chain.market.address,
        "data": function._encode_transaction_data(),
        "value": hex(value),
        "gas": hex(1_000_000),
    }


@pytest.fixture
def reorg_node() -> Iterator[Anvil]:
    """A node of its own: its last blocks are rewritten."""
    with Anvil() as node:
        yield node


async def test_reorganisation(hass: HomeAssistant, reorg_node: Anvil, freezer: FrozenDateTimeFactory) -> None:
    """Bids, offers and connections the integration saw vanish or change; it follows the chain."""
    chain = make_chain(reorg_node.url)
    meter = reported_meter(chain, BUYER.address)
    rival_meter = reported_meter(chain, RIVAL.address)
    seller = await setup_entry(hass, market_entry(chain, reorg_node.url, SELLER))
    buyer = await setup_entry(hass, market_entry(chain, reorg_node.url, BUYER, meter=meter.address))
    created = async_capture_events(hass, EVENT_OFFER_CREATED)
    outbid = async_capture_events(hass, EVENT_OUTBID)
    awarded = async_capture_events(hass, EVENT_OFFER_AWARDED)

    async def settled_polls() -> None:
        """Two polls: what the first one fires, the second must not fire again."""
        await poll(hass, freezer)
        counts = (len(created), len(outbid), len(awarded))
        await poll(hass, freezer)
        assert (len(created), len(outbid), len(awarded)) == counts

    # A different bid wins: the buyer's bid, already seen, is replaced by the rival's.
    await call(
        hass, "sell", {"config_entry_id": seller.entry_id, "energy": 2, "start_price": 0.0001, "bidding_minutes": 10}
    )
    await call(hass, "bid", {"config_entry_id": buyer.entry_id, "offer_id": 1, "price": 0.0002})
    await settled_polls()
    assert float(state(hass, f"sensor.{SELLER_ID}_highest_bid_on_my_offer")) == 0.0002
    assert float(state(hass, f"sensor.{BUYER_ID}_escrow_locked")) == 0.0004
    rival_price = 3 * 10**14
    reorg(
        chain,
        1,
        market_call(
            chain,
            chain.market.functions.bid(1, rival_price, rival_meter.address),
            RIVAL.address,
            chain.escrow_for(1, rival_price),
        ),
    )
    await settled_polls()
    assert chain.offer(1)["highestBidder"] == RIVAL.address
    assert float(state(hass, f"sensor.{SELLER_ID}_highest_bid_on_my_offer")) == 0.0003
    assert float(state(hass, f"sensor.{BUYER_ID}_escrow_locked")) == 0
    assert float(state(hass, f"sensor.{BUYER_ID}_withdrawable_credit")) == 0
    min_next = chain.market.functions.minNextBid(1).call() / 10**18
    assert float(state(hass, f"sensor.{BUYER_ID}_best_open_price")) == min_next
    assert outbid == []  # in the chain that won, the buyer never bid
    assert [event.data["offer_id"] for event in created] == [1, 1]

    # The same transaction mined again in a replacing block: the same log, no second event.
    await call(
        hass, "sell", {"config_entry_id": seller.entry_id, "energy": 3, "start_price": 0.0001, "bidding_minutes": 10}
    )
    await settled_polls()
    assert len(created) == 4
    latest = chain.w3.eth.get_block("latest")
    raw = chain.w3.provider.make_request(
        RPCEndpoint("eth_getRawTransactionByHash"),
        [latest["transactions"][0].to_0x_hex()],  # type: ignore[union-attr]
    )["result"]
    reorg(chain, 1, raw)
    assert chain.w3.eth.get_block("latest")["hash"] != latest["hash"]
    await settled_polls()
    assert len(created) == 4

    # An offer already seen vanishes; another one takes its id.
    reorg(chain, 1, market_call(chain, chain.market.functions.createOffer(1000, 5 * 10**13, 600), RIVAL.address))
    await settled_polls()
    assert [(event.data["offer_id"], event.data["mine"]) for event in created[4:]] == [(2, False), (2, False)]
    offers = hass.states.get(f"sensor.{SELLER_ID}_open_offers")
    assert offers is not None
    assert offers.state == "2"
    assert [(offer["offer_id"], offer["mine"], offer["energy_kwh"]) for offer in offers.attributes["offers"]] == [
        (1, True, 2),
        (2, False, 1),
    ]
    assert float(state(hass, f"sensor.{BUYER_ID}_best_open_price")) == 0.00005

    # A connection vanishes: its device goes; awarded again, it comes back.
    chain.travel(601)
    chain.tx(chain.market.functions.finalize(1), chain.registrar)
    await settled_polls()
    assert len(awarded) == 1
    assert state(hass, "binary_sensor.connection_1_selling_delivering") == STATE_ON
    reorg(chain, 1)
    await settled_polls()
    assert connection_devices(hass, seller) == []
    assert hass.states.get("binary_sensor.connection_1_selling_delivering") is None
    assert float(state(hass, f"sensor.{SELLER_ID}_highest_bid_on_my_offer")) == 0.0003
    chain.tx(chain.market.functions.finalize(1), chain.registrar)
    await settled_polls()
    assert connection_devices(hass, seller) == ["Connection 1 (selling)"]
    assert state(hass, "binary_sensor.connection_1_selling_delivering") == STATE_ON
    assert state(hass, f"sensor.{SELLER_ID}_highest_bid_on_my_offer") == "unknown"
    assert len(awarded) == 2  # a new log in the chain that won


def connection_devices(hass: HomeAssistant, entry: MockConfigEntry) -> list[str | None]:
    devices = dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)
    return [device.name_by_user or device.name for device in devices if device.name != entry.title]
