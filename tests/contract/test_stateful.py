"""Random sequences of every market action, on the real contract, checked against a Python model.

Hypothesis drives the contract on the session's anvil node and `tests.contract.model` with the same
actions: meters registered and revoked, offers created, cancelled, bid on (also too low, with the
wrong escrow, too late), finalized, time travel across bidding ends and grace windows, batches of
signed readings (valid, zero, at a cap, taken before an award, replayed, decreasing, badly signed,
from unknown or revoked meters, from the future), connections closed, released and claimed, credit
withdrawn. After every step the contract's books must match the model to the wei (credit, escrow
and open ids of every account, every offer and connection, every meter, the open-offers pages), and
its balance must equal all escrows plus all credits. An action the model rejects must revert with
the model's custom error and arguments, and change nothing.

Each example starts from one anvil snapshot taken after deployment (`evm_revert` consumes it, so
a new one is taken at once). Every block's timestamp is set by the test (one second per block
unless it travels), so the model knows the `block.timestamp` of each transaction exactly.
`HYPOTHESIS_EXAMPLES` sets the number of examples (default 200); run with `-s` to see how many
examples took each path.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, cast

import coincurve
import pytest
from eth_abi.abi import decode, encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ABIFunction
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from web3 import Web3
from web3.exceptions import ContractCustomError
from web3.types import RPCEndpoint

from devchain.deploy import artifact, deploy_market
from oracle.readings import Domain, SignedReading, reading_digest, sign_reading
from tests.chain import error_name
from tests.contract.model import (
    MAX_BIDDING_SECONDS,
    MAX_CLOCK_SKEW,
    MIN_BID_INCREMENT,
    TIMESTEP,
    ZERO_ADDRESS,
    MarketModel,
    Reading,
    Record,
    Revert,
    Skip,
    Status,
    escrow_wei,
    pay_wei,
)

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "200"))
N_ACTORS = 6
N_METERS = 8
INITIAL_METERS = 4  # meter i is registered to actor i and has reported once when an example starts
GAS = 3_000_000
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# Init code that returns block.timestamp: TIMESTAMP PUSH0 MSTORE PUSH1 32 PUSH0 RETURN.
BLOCK_TIMESTAMP_CODE = "0x425f5260205ff3"


class Abi:
    """Calldata and custom errors of the market, without web3's per-call overhead (eth_abi decoding
    dominated the run time; every view the test reads returns static words)."""

    def __init__(self, abi: list[dict[str, Any]]) -> None:
        self.functions = {item["name"]: cast(ABIFunction, item) for item in abi if item["type"] == "function"}
        self.selectors = {name: "0x" + function_abi_to_4byte_selector(fn).hex() for name, fn in self.functions.items()}
        self.errors: dict[str, list[str]] = {}
        for item in abi:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                self.errors["0x" + keccak(text=f"{item['name']}({','.join(types)})")[:4].hex()] = types

    def calldata(self, name: str, *args: Any) -> str:
        if all(isinstance(a, int | str) for a in args):  # static words: uint, address
            return self.selectors[name] + "".join(f"{as_word(a):064x}" for a in args)
        return self.selectors[name] + encode(get_abi_input_types(self.functions[name]), args).hex()

    def error(self, data: str) -> tuple[str, tuple[Any, ...]]:
        """The custom error's name (by tests.chain.error_name) and decoded arguments."""
        name = error_name(ContractCustomError("revert", data=data))
        args = decode(self.errors[data[:10]], bytes.fromhex(data[10:]))
        return name, tuple(to_checksum_address(a) if isinstance(a, str) else a for a in args)


def as_word(value: int | str) -> int:
    """An ABI word as an int: addresses by their number, bools and enums as 0/1/..."""
    return int(value, 16) if isinstance(value, str) else int(value)


def words(data: str) -> list[int]:
    """An ABI-encoded return value as its 32-byte words."""
    return [int(data[i : i + 64], 16) for i in range(2, len(data), 64)]


def event_topic(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()


READINGS_ACCEPTED = event_topic("ReadingsAccepted(uint256[])")
READING_SKIPPED = event_topic("ReadingSkipped(address,uint256,uint256,uint8)")
WITHDRAWN = event_topic("Withdrawn(address,uint256)")


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error))
        self.error = error


class Node:
    """Raw JSON-RPC to anvil through the web3 provider (one HTTP round trip per call or batch)."""

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3

    def request(self, method: str, *params: Any) -> Any:
        response = self.w3.provider.make_request(RPCEndpoint(method), list(params))
        if "error" in response:
            raise RpcError(dict(response["error"]))
        return response["result"]

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        responses = self.w3.provider.make_batch_request([(RPCEndpoint(m), p) for m, p in calls])  # type: ignore[attr-defined]
        assert isinstance(responses, list), responses
        for response in responses:
            assert "error" not in response, response
        return [r["result"] for r in responses]

    def latest_timestamp(self) -> int:
        return int(self.request("eth_getBlockByNumber", "latest", False)["timestamp"], 16)

    def set_next_timestamp(self, timestamp: int) -> None:
        self.request("evm_setNextBlockTimestamp", timestamp)


def meter_key(index: int) -> LocalAccount:
    key: LocalAccount = Account.from_key(keccak(text=f"energykart stateful test meter {index}"))
    return key


def fast_sign(key: LocalAccount, domain: Domain, cumulative_wh: int, timestamp: int) -> SignedReading:
    """Same signature as oracle.readings.sign_reading (checked in the fixture), ten times faster."""
    digest = reading_digest(domain.separator(), key.address, cumulative_wh, timestamp)
    sig = coincurve.PrivateKey(bytes(key.key)).sign_recoverable(digest, hasher=None)
    return SignedReading(key.address, cumulative_wh, timestamp, 27 + sig[64], sig[:32], sig[32:64])


@dataclass
class World:
    """The deployed market and the model of its state at the snapshot every example starts from."""

    node: Node
    abi: Abi
    market: str
    domain: Domain
    registrar: str
    relayer: str
    actors: list[str]
    meters: list[LocalAccount]
    model: MarketModel
    snapshot: str = ""
    history: dict[str, list[SignedReading]] = field(default_factory=dict)
    coverage: Counter[str] = field(default_factory=Counter)  # examples that took each path


class Driver:
    """Runs one action on both the model and the contract and compares the outcomes."""

    def __init__(self, world: World, model: MarketModel) -> None:
        self.world = world
        self.node = world.node
        self.abi = world.abi
        self.model = model
        # Accepted readings per meter, for replays.
        self.history = copy.deepcopy(world.history)
        self.paths: set[str] = set()  # what this example exercised (outcomes, reverts, end paths)

    def act(
        self, sender: str, name: str, args: tuple[Any, ...], apply: Callable[[], object], value: int = 0
    ) -> dict[str, Any] | None:
        """`apply` the action to the model; the contract must do the same or revert the same way.

        Returns the receipt of the transaction, or None when it reverted as the model expected: the
        revert's error comes from simulating it on the pending block, and the transaction is mined
        all the same, so that the next check shows it changed nothing.
        """
        data = self.abi.calldata(name, *args)
        tx = {"from": sender, "to": self.world.market, "data": data, "value": hex(value)}
        try:
            apply()
        except Revert as revert:
            expected: Revert | None = revert
        else:
            expected = None
        mined_at = self.model.time
        if expected is not None:
            outcome = self._simulate(tx, "pending", mined_at)
            assert outcome == (expected.name, expected.error_args), (
                f"{name}{args} from {sender}: {outcome} != {expected}"
            )
            self.paths.add(f"{name} reverted with {expected.name}")
        receipt: dict[str, Any] = self.node.request("eth_sendTransactionSync", {**tx, "gas": hex(GAS)})
        self.model.mined()
        if expected is not None:
            assert int(receipt["status"], 16) == 0, f"{name}{args} did not revert"
            return None
        if int(receipt["status"], 16) != 1:
            before = hex(int(receipt["blockNumber"], 16) - 1)
            raise AssertionError(f"{name}{args} from {sender} reverted: {self._simulate(tx, before, mined_at)}")
        self.paths.add(f"{name} done")
        return receipt

    def _simulate(self, tx: dict[str, Any], block: str, time: int) -> tuple[str, tuple[Any, ...]] | str:
        """The custom error (name, arguments) `tx` reverts with on top of `block`, at `time`."""
        try:
            self.node.request("eth_call", tx, block, {}, {"time": hex(time)})
        except RpcError as err:
            data = err.error.get("data")
            return self.abi.error(data) if isinstance(data, str) and len(data) >= 10 else str(err.error)
        return "no revert"

    def settle(self, readings: list[SignedReading], expected: list[Skip]) -> None:
        receipt = self.act(self.world.relayer, "settle", ([r.as_tuple() for r in readings],), lambda: None)
        assert receipt is not None
        accepted: list[int] = []
        skipped: list[tuple[str, int, int, int]] = []
        for log in receipt["logs"]:
            body = bytes.fromhex(log["data"][2:])
            if log["topics"][0] == READINGS_ACCEPTED:
                accepted.extend(decode(["uint256[]"], body)[0])
            elif log["topics"][0] == READING_SKIPPED:
                wh, ts, reason = decode(["uint256", "uint256", "uint8"], body)
                skipped.append((to_checksum_address("0x" + log["topics"][1][-40:]), wh, ts, reason))
        assert accepted == [r.as_tuple()[0] for r, e in zip(readings, expected, strict=True) if e == Skip.NONE]
        assert skipped == [
            (r.meter, r.cumulative_wh, r.timestamp, e)
            for r, e in zip(readings, expected, strict=True)
            if e != Skip.NONE
        ]
        for r, e in zip(readings, expected, strict=True):
            self.paths.add(f"reading {e.name}")
            if e == Skip.NONE:
                self.history.setdefault(r.meter, []).append(r)

    def withdraw(self, sender: str) -> None:
        amount: list[int] = []
        before = int(self.node.request("eth_getBalance", sender, "latest"), 16)
        receipt = self.act(sender, "withdraw", (), lambda: amount.append(self.model.withdraw(sender)))
        if receipt is None:
            return
        after = int(self.node.request("eth_getBalance", sender, "latest"), 16)
        fee = int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
        assert after - before == amount[0] - fee
        events = [int(log["data"], 16) for log in receipt["logs"] if log["topics"][0] == WITHDRAWN]
        assert events == amount

    def check(self) -> None:
        """The contract's books, statuses and meters equal the model's, to the wei."""
        model, abi, market = self.model, self.abi, self.world.market
        for note in model.notes:
            self.paths.add(note)
        model.notes.clear()

        def view(name: str, *args: int | str) -> tuple[str, list[Any]]:
            return ("eth_call", [{"to": market, "data": abi.calldata(name, *args)}, "latest"])

        ids = sorted(model.records)
        meters = [m.address for m in self.world.meters]
        # The open offers, oldest first: in one page, and in pages of two.
        bidding = [i for i in ids if model.records[i].status == Status.BIDDING]
        pages = [(0, 100)] + [(after, 2) for after in [0, *bidding[1::2]]]
        calls: list[tuple[str, list[Any]]] = [
            ("eth_getBalance", [market, "latest"]),
            ("eth_call", [{"data": BLOCK_TIMESTAMP_CODE}, "pending"]),
            view("lastOfferId"),
            view("openOfferCount"),
            *(view("accountOf", a) for a in self.world.actors),
            *(view("getOffer", i) for i in ids),
            *(view("getConnection", i) for i in ids if model.records[i].status >= Status.ACTIVE),
            *(view("meterOf", m) for m in meters),
            *(view("openOffers", after, size) for after, size in pages),
        ]
        results = iter(words(r) for r in self.node.batch(calls))
        (balance,) = next(results)
        assert next(results) == [model.time], "the next block's timestamp is not the model's"
        assert next(results) == [len(ids)], "lastOfferId"
        assert next(results) == [sum(r.status == Status.BIDDING for r in model.records.values())], "openOfferCount"

        books = 0
        for account in self.world.actors:
            # (credit, escrow, uint256[] openIds): two words, the array's offset, length, items
            credit, escrow, _, _, *open_ids = next(results)
            expected = [model.credit_of(account), model.escrow_of(account), model.open_ids.get(account, [])]
            assert [credit, escrow, open_ids] == expected, f"books of {account}"
            books += credit + escrow
        # Conservation: every wei the contract holds is someone's escrow or credit.
        assert balance == books == model.balance

        offers = {i: self.offer_words(model.records[i]) for i in ids}
        for i in ids:
            assert next(results) == offers[i], f"offer {i}"
        for i in ids:
            rec = model.records[i]
            if rec.status < Status.ACTIVE:
                continue
            delivered = model.delivered_now(rec)
            paid = pay_wei(rec.price, delivered)
            ended = rec.status >= Status.COMPLETED
            filling = not ended and model.meters[rec.meter].queue[0] == i
            escrow_left = 0 if ended else escrow_wei(rec.price, rec.energy_wh) - paid
            conn: list[int | str] = [
                i,
                rec.seller,
                rec.buyer,
                rec.meter,
                rec.price,
                rec.energy_wh,
                delivered,
                escrow_left,
                paid,
            ]
            conn += [rec.closed_at, rec.status, filling]
            assert next(results) == [as_word(w) for w in conn], f"connection {i}"
        for address in meters:
            m = model.meters.get(address)
            meter: list[int | str] = (
                [m.owner, m.meter_id, m.registered, m.last_wh, m.last_ts, model.filling(m)] if m else [0] * 6
            )
            assert next(results) == [as_word(w) for w in meter], f"meter {address}"
        for after, size in pages:
            # (OfferView[] page, uint256 nextAfterId): array offset, nextAfterId, length, 9 words per offer
            start = bidding.index(after) + 1 if after else 0
            page = bidding[start : start + size]
            more = start + size < len(bidding)
            expected_page = [0x40, page[-1] if page and more else 0, len(page)]
            expected_page += [w for i in page for w in offers[i]]
            assert next(results) == expected_page, f"openOffers({after}, {size})"

    def offer_words(self, rec: Record) -> list[int]:
        """`getOffer(rec.id)` as the model sees it."""
        offer: list[int | str] = [rec.id, rec.seller, rec.energy_wh, rec.start_price, rec.price, rec.buyer]
        offer += [rec.bidding_ends, self.model.min_next_bid(rec), rec.status]
        return [as_word(w) for w in offer]


@pytest.fixture(scope="module")
def world(w3: Web3) -> Iterator[World]:
    node = Node(w3)
    accounts = [str(a) for a in w3.eth.accounts]
    registrar, relayer, actors = accounts[0], accounts[-1], accounts[1 : 1 + N_ACTORS]
    market = deploy_market(w3, registrar, timestep=TIMESTEP, min_bid_increment=MIN_BID_INCREMENT)
    domain = Domain(chain_id=w3.eth.chain_id, contract=market.address)
    meters = [meter_key(i) for i in range(N_METERS)]
    assert fast_sign(meters[0], domain, 5, 7) == sign_reading(meters[0].key, domain, 5, 7)

    # From here on every block is one second after the previous one, unless the test travels.
    node.request("anvil_setBlockTimestampInterval", 1)
    node.set_next_timestamp(node.latest_timestamp() + 1)
    model = MarketModel(registrar, node.latest_timestamp() + 1)
    world = World(node, Abi(artifact()["abi"]), market.address, domain, registrar, relayer, actors, meters, model)
    driver = Driver(world, model)
    for i in range(INITIAL_METERS):
        meter, owner = meters[i].address, actors[i]
        driver.act(registrar, "registerMeter", (meter, owner), partial(model.register_meter, registrar, meter, owner))
    first = [fast_sign(meters[i], domain, 1000 * i + 500, model.time - 60) for i in range(INITIAL_METERS)]
    driver.settle(first, [model.apply_reading(Reading(r.meter, r.cumulative_wh, r.timestamp, True)) for r in first])
    assert all(m.last_ts for m in model.meters.values())
    driver.check()
    world.history = driver.history
    world.snapshot = node.request("evm_snapshot")
    try:
        yield world
    finally:
        node.request("evm_revert", world.snapshot)
        node.request("anvil_removeBlockTimestampInterval")


# ---------------------------------------------------------------------------------- strategies

actors = st.integers(0, N_ACTORS - 1)
anyone = st.integers(0, N_ACTORS)  # N_ACTORS stands for the relayer, a third party
picks = st.integers(0, 2**16)
mostly_fit = st.sampled_from(["fit"] * 6 + ["any", "unknown"])
mostly_true = st.sampled_from([True] * 5 + [False])
energies = st.one_of(st.integers(1, 3000), st.sampled_from([1, 999, 1000, 1001]))
# Wei per kWh: tiny prices make the rounding of escrow (up) and payment (down) visible.
start_prices = st.one_of(st.integers(1, 10**6), st.integers(10**9, 10**13), st.sampled_from([1, 999, 10**12 + 7]))
bidding_times = st.one_of(st.integers(1, 2000), st.sampled_from([TIMESTEP, MAX_BIDDING_SECONDS]))
offer_flaws = st.sampled_from([None] * 9 + ["energy", "price", "no_time", "long_time"])
bid_extras = st.one_of(st.just(0), st.integers(1, 10**6), st.integers(10**9, 5 * 10**9))
travel_steps = st.one_of(st.integers(1, 120), st.integers(TIMESTEP - 50, TIMESTEP + 100), st.integers(1800, 20_000))
wh_steps = st.one_of(st.integers(0, 50), st.integers(100, 3000))
seconds_back = st.sampled_from([0, 0, 1, 30, 299, 600, TIMESTEP - 1, TIMESTEP + 1, 1800])
READING_KINDS = (
    ["valid"] * 6
    + ["zero"] * 2
    + ["cap"] * 3
    + ["skew", "future", "replay", "decrease", "stale", "bad_signer", "other_domain", "tampered", "high_s", "zero_r"]
)
reading_specs = st.tuples(
    st.integers(0, N_METERS - 1),  # meter
    st.booleans(),  # prefer a meter that is filling a connection
    st.sampled_from(READING_KINDS),
    wh_steps,
    seconds_back,
)


class MarketMachine(RuleBasedStateMachine):
    """Fine-grained rules for every action (valid and not), plus `progress`, which moves one offer
    along its happy path, so that full lifecycles are common whichever rules an example enables."""

    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        node = self.world.node
        model = copy.deepcopy(self.world.model)
        # evm_revert went back to the snapshot's block; time moves on from there.
        model.time = node.latest_timestamp() + 1
        node.set_next_timestamp(model.time)
        self.model = model
        self.driver = Driver(self.world, model)

    def teardown(self) -> None:
        self.world.coverage.update(self.driver.paths)
        node = self.world.node
        assert node.request("evm_revert", self.world.snapshot) is True
        self.world.snapshot = node.request("evm_snapshot")

    # ------------------------------------------------------------------ helpers

    def actor(self, index: int) -> str:
        return self.world.actors[index] if index < N_ACTORS else self.world.relayer

    def target(self, pick: int, kind: str, wanted: tuple[Status, ...]) -> int:
        """An offer id: one in a `wanted` status when kind is "fit" and there is one, any known id
        for "any", and an id that does not exist for "unknown"."""
        records = self.model.records
        if kind == "unknown" or not records:
            return len(records) + 1 + pick % 3
        fit = [i for i, r in records.items() if r.status in wanted] if kind == "fit" else []
        pool = fit or sorted(records)
        return pool[pick % len(pool)]

    def metered_bidders(self, seller: str) -> list[str]:
        """Accounts that may bid on `seller`'s offer: they own a registered meter that has reported."""
        model = self.model
        return sorted({m.owner for m in model.meters.values() if m.registered and m.last_ts and m.owner != seller})

    def to_time(self, timestamp: int) -> None:
        """Travel so that the next block is at `timestamp` (never back)."""
        self.model.time = max(self.model.time, timestamp)
        self.world.node.set_next_timestamp(self.model.time)

    def do_create_offer(self, sender: str, energy: int, price: int, seconds: int) -> None:
        self.driver.act(
            sender,
            "createOffer",
            (energy, price, seconds),
            lambda: self.model.create_offer(sender, energy, price, seconds),
        )

    def do_bid(self, sender: str, offer_id: int, price: int, meter: str, value: int) -> None:
        self.driver.act(
            sender,
            "bid",
            (offer_id, price, meter),
            lambda: self.model.bid(sender, offer_id, price, meter, value),
            value,
        )

    def do_valid_bid(self, rec: Record, pick: int, extra: int) -> bool:
        bidders = self.metered_bidders(rec.seller)
        if not bidders or self.model.time >= rec.bidding_ends:
            return False
        # Often the same buyer, so that connections queue on its meter.
        sender = bidders[0 if pick % 3 == 0 else pick % len(bidders)]
        meter = next(m.address for m in self.model.meters.values() if m.owner == sender and m.last_ts)
        price = self.model.min_next_bid(rec) + extra
        self.do_bid(sender, rec.id, price, meter, escrow_wei(price, rec.energy_wh))
        return True

    def do_settle(self, specs: list[tuple[int, bool, str, int, int]]) -> None:
        readings: list[SignedReading] = []
        expected: list[Skip] = []
        for spec in specs:
            reading, signed_by_meter = self.make_reading(*spec)
            readings.append(reading)
            # Applied one by one: a later reading of the same meter builds on the earlier ones.
            expected.append(
                self.model.apply_reading(
                    Reading(reading.meter, reading.cumulative_wh, reading.timestamp, signed_by_meter)
                )
            )
        self.driver.settle(readings, expected)

    def make_reading(self, index: int, busy: bool, kind: str, wh: int, back: int) -> tuple[SignedReading, bool]:
        """A signed reading of meter `index` (or of a meter filling a connection, when `busy`),
        shaped by `kind`; and whether it is validly signed by that meter."""
        model, world = self.model, self.world
        filling = [i for i, k in enumerate(world.meters) if k.address in model.meters and model.meters[k.address].queue]
        if busy and filling:
            index = filling[index % len(filling)]
        key = world.meters[index]
        state = model.meters.get(key.address)
        last_wh, last_ts = (state.last_wh, state.last_ts) if state else (0, 0)
        now = model.time
        cumulative, timestamp = last_wh + wh, max(last_ts + 1, now - back)
        if kind == "zero":
            cumulative = last_wh
        elif kind == "cap" and state and state.queue:
            head = model.records[state.queue[0]]
            cumulative = max(last_wh, head.start_wh + head.energy_wh + wh % 3 - 1)
        elif kind == "skew":
            timestamp = max(last_ts + 1, now + 1 + back % MAX_CLOCK_SKEW)
        elif kind == "future":
            timestamp = max(last_ts + 1, now + MAX_CLOCK_SKEW + 1 + back)
        elif kind == "replay" and self.driver.history.get(key.address):
            old = self.driver.history[key.address]
            return old[wh % len(old)], True
        elif kind == "decrease":
            cumulative = max(last_wh - 1 - wh % 10, 0)
        elif kind == "stale":
            timestamp = max(last_ts, 1)
        signed = fast_sign(key, world.domain, cumulative, timestamp)
        if kind == "bad_signer":
            other = fast_sign(world.meters[(index + 1) % N_METERS], world.domain, cumulative, timestamp)
            return SignedReading(key.address, cumulative, timestamp, other.v, other.r, other.s), False
        if kind == "other_domain":
            foreign = Domain(chain_id=world.domain.chain_id + 1, contract=world.domain.contract)
            return fast_sign(key, foreign, cumulative, timestamp), False
        if kind == "tampered":
            return SignedReading(key.address, cumulative + 1, timestamp, signed.v, signed.r, signed.s), False
        if kind == "high_s":  # the same signature, malleated: ecrecover accepts it, the contract must not
            high_s = (SECP256K1_N - int.from_bytes(signed.s, "big")).to_bytes(32, "big")
            return SignedReading(key.address, cumulative, timestamp, 55 - signed.v, signed.r, high_s), False
        if kind == "zero_r":
            return SignedReading(key.address, cumulative, timestamp, signed.v, bytes(32), signed.s), False
        return signed, True

    # ------------------------------------------------------------------ set-up of each example

    @initialize(
        offers=st.lists(
            st.tuples(actors, energies, start_prices, st.integers(60, 1800), picks), min_size=1, max_size=4
        ),
        award=mostly_true,
    )
    def open_market(self, offers: list[tuple[int, int, int, int, int]], award: bool) -> None:
        """A few offers, most with a bid, usually awarded: every example starts with a market to act on."""
        for seller, energy, price, seconds, pick in offers:
            self.do_create_offer(self.actor(seller), energy, price, seconds)
            if pick % 4:
                self.do_valid_bid(self.model.records[len(self.model.records)], pick, pick % 3 * MIN_BID_INCREMENT)
        if award:
            self.to_time(max(r.bidding_ends for r in self.model.records.values()))
            for offer_id in sorted(self.model.records):
                self.driver.act(self.actor(N_ACTORS), "finalize", (offer_id,), partial(self.model.finalize, offer_id))

    # ------------------------------------------------------------------ registrar

    @rule(meter=st.integers(0, N_METERS - 1), owner=actors, by_registrar=mostly_true)
    def register_meter(self, meter: int, owner: int, by_registrar: bool) -> None:
        sender = self.world.registrar if by_registrar else self.actor(owner)
        address, to = self.world.meters[meter].address, self.actor(owner)
        self.driver.act(sender, "registerMeter", (address, to), lambda: self.model.register_meter(sender, address, to))

    @rule(meter=st.integers(0, N_METERS - 1), by_registrar=mostly_true)
    def revoke_meter(self, meter: int, by_registrar: bool) -> None:
        sender = self.world.registrar if by_registrar else self.actor(0)
        address = self.world.meters[meter].address
        self.driver.act(sender, "revokeMeter", (address,), lambda: self.model.revoke_meter(sender, address))

    # ------------------------------------------------------------------ offers

    @rule(seller=actors, energy=energies, price=start_prices, seconds=bidding_times, flaw=offer_flaws)
    def create_offer(self, seller: int, energy: int, price: int, seconds: int, flaw: str | None) -> None:
        if flaw == "energy":
            energy = 0
        elif flaw == "price":
            price = 0
        elif flaw in ("no_time", "long_time"):
            seconds = 0 if flaw == "no_time" else MAX_BIDDING_SECONDS + 1
        self.do_create_offer(self.actor(seller), energy, price, seconds)

    @rule(pick=picks, kind=mostly_fit, by_seller=st.booleans(), other=actors)
    def cancel_offer(self, pick: int, kind: str, by_seller: bool, other: int) -> None:
        offer_id = self.target(pick, kind, (Status.BIDDING,))
        rec = self.model.records.get(offer_id)
        sender = rec.seller if rec and by_seller else self.actor(other)
        self.driver.act(sender, "cancelOffer", (offer_id,), lambda: self.model.cancel_offer(sender, offer_id))

    @rule(
        pick=picks,
        kind=mostly_fit,
        bidder=actors,
        metered_bidder=mostly_true,
        price=st.sampled_from(["min"] * 3 + ["above"] * 3 + ["too_low"]),
        extra=bid_extras,
        escrow=st.sampled_from(["exact"] * 6 + ["less", "more"]),
        meter_kind=st.sampled_from(["own"] * 5 + ["any", "unreported"]),
        meter_pick=picks,
    )
    def bid(
        self,
        pick: int,
        kind: str,
        bidder: int,
        metered_bidder: bool,
        price: str,
        extra: int,
        escrow: str,
        meter_kind: str,
        meter_pick: int,
    ) -> None:
        model = self.model
        offer_id = self.target(pick, kind, (Status.BIDDING,))
        rec = model.records.get(offer_id)
        metered = self.metered_bidders(rec.seller if rec else ZERO_ADDRESS)
        sender = metered[bidder % len(metered)] if metered_bidder and metered else self.actor(bidder)
        unreported = [m for m in model.meters.values() if m.registered and not m.last_ts]
        if meter_kind == "unreported" and unreported:  # its owner bids with it, before its first reading
            chosen = unreported[meter_pick % len(unreported)]
            sender, meters = chosen.owner, [chosen.address]
        elif meter_kind == "own" and (own := [m.address for m in model.meters.values() if m.owner == sender]):
            meters = own
        else:
            meters = [k.address for k in self.world.meters]
        meter = meters[meter_pick % len(meters)]
        minimum = model.min_next_bid(rec) if rec else MIN_BID_INCREMENT
        amount = {"min": minimum, "above": minimum + extra, "too_low": max(minimum - 1 - extra, 0)}[price]
        required = escrow_wei(amount, rec.energy_wh) if rec else 0
        value = max(required + {"exact": 0, "less": -1, "more": 1 + extra}[escrow], 0)
        self.do_bid(sender, offer_id, amount, meter, value)

    @rule(pick=picks, kind=mostly_fit, caller=anyone)
    def finalize(self, pick: int, kind: str, caller: int) -> None:
        model = self.model
        over = [i for i, r in model.records.items() if r.status == Status.BIDDING and r.bidding_ends <= model.time]
        offer_id = over[pick % len(over)] if kind == "fit" and over else self.target(pick, kind, (Status.BIDDING,))
        self.driver.act(self.actor(caller), "finalize", (offer_id,), lambda: model.finalize(offer_id))

    # ------------------------------------------------------------------ time

    @rule(seconds=travel_steps, to_boundary=st.booleans(), pick=picks, offset=st.sampled_from([-1, 0, 1]))
    def travel(self, seconds: int, to_boundary: bool, pick: int, offset: int) -> None:
        """Forward by `seconds`, or to just before, at or just after the end of a bidding period or
        of a grace window."""
        records = self.model.records.values()
        ends = [r.bidding_ends for r in records if r.status == Status.BIDDING]
        ends += [r.closed_at + TIMESTEP for r in records if r.status == Status.CLOSED]
        future = sorted(t + offset for t in ends if t + offset > self.model.time)
        self.to_time(future[pick % len(future)] if to_boundary and future else self.model.time + seconds)

    # ------------------------------------------------------------------ delivery

    @rule(specs=st.lists(reading_specs, min_size=1, max_size=5))
    def settle(self, specs: list[tuple[int, bool, str, int, int]]) -> None:
        self.do_settle(specs)

    @rule(pick=picks, kind=mostly_fit, by_buyer=mostly_true, other=anyone)
    def close_connection(self, pick: int, kind: str, by_buyer: bool, other: int) -> None:
        offer_id = self.target(pick, kind, (Status.ACTIVE,))
        rec = self.model.records.get(offer_id)
        sender = rec.buyer if rec and by_buyer and rec.buyer != ZERO_ADDRESS else self.actor(other)
        self.driver.act(sender, "closeConnection", (offer_id,), lambda: self.model.close_connection(sender, offer_id))

    @rule(pick=picks, kind=mostly_fit, caller=anyone)
    def release(self, pick: int, kind: str, caller: int) -> None:
        offer_id = self.target(pick, kind, (Status.CLOSED,))
        self.driver.act(self.actor(caller), "release", (offer_id,), lambda: self.model.release(offer_id))

    @rule(pick=picks, kind=mostly_fit, caller=anyone)
    def claim(self, pick: int, kind: str, caller: int) -> None:
        offer_id = self.target(pick, kind, (Status.ACTIVE, Status.CLOSED))
        self.driver.act(self.actor(caller), "claim", (offer_id,), lambda: self.model.claim(offer_id))

    @rule(account=actors)
    def withdraw(self, account: int) -> None:
        self.driver.withdraw(self.actor(account))

    # ------------------------------------------------------------------ happy path

    @rule(pick=picks, wh=wh_steps, back=seconds_back, extra=bid_extras)
    def progress(self, pick: int, wh: int, back: int, extra: int) -> None:
        """Take one live offer one step along its life: bid, award, deliver, close, release."""
        model = self.model
        live = [r for r in model.records.values() if r.status in (Status.BIDDING, Status.ACTIVE, Status.CLOSED)]
        if not live:
            self.do_create_offer(self.actor(pick % N_ACTORS), 1 + wh, 1 + extra, 1 + back)
            return
        rec = live[pick % len(live)]
        meter = (
            next(i for i, k in enumerate(self.world.meters) if k.address == rec.meter)
            if rec.meter in model.meters
            else 0
        )
        if rec.status == Status.BIDDING:
            if rec.buyer == ZERO_ADDRESS and self.do_valid_bid(rec, pick, extra):
                return
            self.to_time(rec.bidding_ends)
            self.driver.act(self.actor(pick % (N_ACTORS + 1)), "finalize", (rec.id,), lambda: model.finalize(rec.id))
        elif rec.status == Status.ACTIVE and pick % 3:
            self.do_settle([(meter, False, "valid", wh, back)])
        elif rec.status == Status.ACTIVE:
            self.driver.act(rec.buyer, "closeConnection", (rec.id,), lambda: model.close_connection(rec.buyer, rec.id))
        elif model.time <= rec.closed_at + TIMESTEP and pick % 2:
            self.do_settle([(meter, False, "valid", wh, back)])
        else:
            self.to_time(rec.closed_at + TIMESTEP + 1)
            self.driver.act(self.actor(pick % (N_ACTORS + 1)), "release", (rec.id,), lambda: model.release(rec.id))

    @invariant()
    def books_match_the_model(self) -> None:
        self.driver.check()


def test_random_action_sequences_keep_the_books_exact(world: World) -> None:
    MarketMachine.world = world
    run_state_machine_as_test(
        MarketMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=35,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        ),
    )
    # Shown with -s (or -rP): in how many examples each action outcome and settlement path occurred.
    for path, examples in sorted(world.coverage.items()):
        print(f"{examples:6d}  {path}")
