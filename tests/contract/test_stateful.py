"""Random sequences of every market action, on the real contract, checked against a Python model.

Hypothesis drives the contract on an anvil node of this module's own and `tests.contract.model` with
the same actions: meters registered, revoked and registered again to another owner, offers created
(up to MAX_OFFER_WH), cancelled, bid on (also too low, with the wrong escrow, too late, with a meter
whose queue is full), finalized (awarded, or refused because the bid's meter changed owner or filled
its queue meanwhile), time travel across bidding ends, grace windows and idle periods, batches of
signed readings (valid, zero, at a cap, taken before an award, replayed, decreasing, badly signed,
with stray bits, out of range, from unknown or revoked meters, from the future), connections closed
by their buyer or, once idle, their seller, released and claimed, credit withdrawn with and without
claiming. Every transaction must emit exactly the model's events. After every step the contract's
views must match the model to the wei: every account's credit and its `accountOf` pages (read in
pages of one to three ids), every offer and connection, every meter, the unfinalized offers as
`openOffers` and `dueOffers` pages; and the balance must equal all escrows plus all credits. An
action the model rejects must revert with the model's custom error and arguments, and change
nothing.

The whole run happens twice: on a market settling in the native coin, and on one settling in an
ERC-20 token (the DemoToken), where the balance checked is the market's balance of the token.

Speed (10,000 examples in `make soak`, 5,000 per currency): JSON-RPC goes over one keep-alive HTTP connection without
web3's per-request layers, a transaction is one `eth_sendTransactionSync`, the views of a check are
read in one `eth_call` at one block through a multicall stub placed by state override, and the node
is this module's own (anvil's time per block grows with the chain's height).

Each example starts from one anvil snapshot taken after deployment (`evm_revert` consumes it, so
a new one is taken at once). Every block's timestamp is set by the test (one second per block
unless it travels), so the model knows the `block.timestamp` of each transaction exactly (each
receipt's block timestamp is checked).
`HYPOTHESIS_EXAMPLES` sets the number of examples per currency (default 200); run with `-s` to see
how many examples took each path.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

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
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3 import Web3
from web3.exceptions import ContractCustomError

from devchain.anvil import Anvil
from devchain.deploy import NATIVE, artifact, deploy_market, deploy_token
from oracle.readings import Domain, SignedReading, reading_digest, sign_reading
from tests.chain import error_name
from tests.contract.model import (
    IDLE_TIMESTEPS,
    MAX_BIDDING_SECONDS,
    MAX_CLOCK_SKEW,
    MAX_METER_CONNECTIONS,
    MAX_OFFER_WH,
    MAX_READING_WH,
    MIN_BID_INCREMENT,
    TIMESTEP,
    ZERO_ADDRESS,
    Event,
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
# A multicall stub, put at MULTICALL_ADDRESS by an eth_call state override. Calldata: the target
# address as a word, then per call its length as a word and its calldata. It staticcalls each in turn
# and returns, per call, a word (returndatasize, top bit set if the call failed) and the return data:
#   PUSH1 32  PUSH0                                   ; i = 32 (calldata offset), o = 0 (output offset)
#   loop: JUMPDEST DUP2 CALLDATASIZE GT PUSH1 body JUMPI PUSH0 RETURN        ; i >= size: return(0, o)
#   body: JUMPDEST DUP2 CALLDATALOAD DUP1 DUP4 PUSH1 32 ADD DUP4 PUSH1 32 ADD CALLDATACOPY
#         PUSH0 PUSH0 DUP3 DUP5 PUSH1 32 ADD PUSH0 CALLDATALOAD GAS STATICCALL   ; input at o + 32
#         ISZERO PUSH1 255 SHL RETURNDATASIZE OR DUP3 MSTORE                     ; the result word at o
#         RETURNDATASIZE PUSH0 DUP4 PUSH1 32 ADD RETURNDATACOPY                  ; its data over the input
#         DUP3 ADD PUSH1 32 ADD SWAP2 POP RETURNDATASIZE ADD PUSH1 32 ADD PUSH1 loop JUMP
MULTICALL_CODE = (
    "0x60205f5b813611600c575ff35b8135808360200183602001375f5f82846020015f355afa1560ff1b3d1782523d5f83"
    "6020013e820160200191503d01602001600356"
)
MULTICALL_ADDRESS = "0x000000000000000000000000000000000000ca11"
CALL_FAILED = 1 << 255
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)

type Packed = tuple[int, bytes, bytes]  # a `SignedReading` as `settle` takes it: (reading word, r, vs)


class Abi:
    """Calldata, custom errors and events of the market, without web3's per-call overhead."""

    def __init__(self, abi: list[dict[str, Any]]) -> None:
        self.functions = {item["name"]: cast(ABIFunction, item) for item in abi if item["type"] == "function"}
        self.selectors = {name: "0x" + function_abi_to_4byte_selector(fn).hex() for name, fn in self.functions.items()}
        self.errors: dict[str, list[str]] = {}
        self.events: dict[str, tuple[str, list[tuple[str, bool]]]] = {}
        for item in abi:
            types = [i["type"] for i in item.get("inputs", [])]
            signature = f"{item.get('name')}({','.join(types)})"
            if item["type"] == "error":
                self.errors["0x" + keccak(text=signature)[:4].hex()] = types
            elif item["type"] == "event":
                inputs = [(i["type"], bool(i["indexed"])) for i in item["inputs"]]
                self.events["0x" + keccak(text=signature).hex()] = (item["name"], inputs)

    def calldata(self, name: str, *args: Any) -> str:
        if all(isinstance(a, int | str) for a in args):  # static words: uint, address
            return self._static_calldata(name, args)
        return self.selectors[name] + encode(get_abi_input_types(self.functions[name]), args).hex()

    @cache  # noqa: B019 - one Abi per test module; the checks ask for the same views at every step
    def _static_calldata(self, name: str, args: tuple[int | str, ...]) -> str:
        return self.selectors[name] + "".join(f"{as_word(a):064x}" for a in args)

    def error(self, data: str) -> tuple[str, tuple[Any, ...]]:
        """The custom error's name (by tests.chain.error_name) and decoded arguments."""
        name = error_name(ContractCustomError("revert", data=data))
        args = decode(self.errors[data[:10]], bytes.fromhex(data[10:]))
        return name, tuple(to_checksum_address(a) if isinstance(a, str) else a for a in args)

    def event(self, log: dict[str, Any]) -> Event:
        """A receipt's log as (event name, arguments in ABI order); addresses checksummed."""
        name, inputs = self.events[log["topics"][0]]
        topics = iter(log["topics"][1:])
        data_types = [t for t, indexed in inputs if not indexed]
        if all(t.startswith(("uint", "address", "bool")) and not t.endswith("]") for t in data_types):
            data: Iterator[Any] = iter(words(log["data"]))  # static words: no eth_abi round
        else:
            data = iter(decode(data_types, bytes.fromhex(log["data"][2:])))
        args = []
        for kind, indexed in inputs:
            value = int(next(topics), 16) if indexed else next(data)
            if kind == "address":
                value = to_checksum_address(f"0x{value:040x}" if isinstance(value, int) else value)
            elif kind == "bool":
                value = bool(value)
            args.append(value)
        return name, tuple(args)


def as_word(value: int | str) -> int:
    """An ABI word as an int: addresses by their number, bools and enums as 0/1/..."""
    return address_word(value) if isinstance(value, str) else int(value)


@cache
def address_word(address: str) -> int:
    return int(address, 16)


def quantity(value: str | int) -> int:
    """A JSON-RPC quantity: hex, or (anvil's receipt `blockTimestamp`) a plain number."""
    return int(value, 16) if isinstance(value, str) else value


def words(data: str | bytes) -> list[int]:
    """ABI-encoded data (hex or bytes) as its 32-byte words."""
    raw = bytes.fromhex(data[2:]) if isinstance(data, str) else data
    return [int.from_bytes(raw[i : i + 32]) for i in range(0, len(raw), 32)]


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error))
        self.error = error


class Node:
    """JSON-RPC to anvil over one keep-alive HTTP/1.1 connection, one round trip per call or batch.

    A request costs about 0.2 ms here; 3 ms through web3's HTTPProvider, 0.5 ms through http.client
    (which parses headers with the email package and sends headers and body in two segments)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.socket = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=60)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = f"POST / HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n".encode()
        self.received = bytearray()
        self.ids = itertools.count(1)

    def _post(self, payload: object) -> Any:
        self._send(payload)
        return self._read()

    def _send(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.socket.sendall(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def _read(self) -> Any:
        while (end := self.received.find(b"\r\n\r\n")) < 0:
            self._receive()
        header = bytes(self.received[:end])
        length = CONTENT_LENGTH.search(header)
        assert header.startswith(b"HTTP/1.1 200 "), header
        assert length, header
        end += 4 + int(length[1])
        while len(self.received) < end:
            self._receive()
        response = json.loads(self.received[end - int(length[1]) : end])
        del self.received[:end]
        return response

    def _receive(self) -> None:
        chunk = self.socket.recv(1 << 16)
        if not chunk:
            raise ConnectionError("anvil closed the connection")
        self.received += chunk

    def request(self, method: str, *params: Any) -> Any:
        response = self._post({"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": list(params)})
        if "error" in response:
            raise RpcError(dict(response["error"]))
        return response["result"]

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Calls that do not depend on each other (anvil may run the calls of a batch in any order)."""
        return self.start_batch(calls)()

    def start_batch(self, calls: list[tuple[str, list[Any]]]) -> Callable[[], list[Any]]:
        """Send a `batch`; the function returned waits for its results. Meanwhile the caller may
        work, but not use the node."""
        first = next(self.ids)
        self.ids = itertools.count(first + len(calls))
        self._send([{"jsonrpc": "2.0", "id": first + n, "method": m, "params": p} for n, (m, p) in enumerate(calls)])

        def results() -> list[Any]:
            responses = sorted(self._read(), key=lambda r: int(r["id"]))
            for response in responses:
                assert "error" not in response, response
            return [r["result"] for r in responses]

        return results

    def close(self) -> None:
        self.socket.close()

    def latest_timestamp(self) -> int:
        return int(self.request("eth_getBlockByNumber", "latest", False)["timestamp"], 16)

    def set_next_timestamp(self, timestamp: int) -> None:
        self.request("evm_setNextBlockTimestamp", timestamp)


def multicall(target: str, calldatas: list[str]) -> tuple[str, list[Any]]:
    """One `eth_call` (at the latest block) that makes every call of `calldatas` to `target`."""
    payload = [f"{int(target, 16):064x}"]
    for data in calldatas:
        payload += [f"{(len(data) - 2) // 2:064x}", data[2:]]
    call = {"to": MULTICALL_ADDRESS, "data": "0x" + "".join(payload)}
    return ("eth_call", [call, "latest", {MULTICALL_ADDRESS: {"code": MULTICALL_CODE}}])


def multicall_results(output: str) -> list[tuple[bool, bytes]]:
    """The (success, return data) of each call of a `multicall`."""
    raw, results, at = bytes.fromhex(output[2:]), [], 0
    while at < len(raw):
        head = int.from_bytes(raw[at : at + 32])
        size = head & (CALL_FAILED - 1)
        results.append((head & CALL_FAILED == 0, raw[at + 32 : at + 32 + size]))
        at += 32 + size
    return results


def meter_key(index: int) -> LocalAccount:
    key: LocalAccount = Account.from_key(keccak(text=f"energykart stateful test meter {index}"))
    return key


def fast_sign(key: LocalAccount, domain: Domain, cumulative_wh: int, timestamp: int) -> SignedReading:
    """Same signature as oracle.readings.sign_reading (checked in the fixture), ten times faster."""
    digest = reading_digest(domain.separator(), key.address, cumulative_wh, timestamp)
    sig = coincurve.PrivateKey(bytes(key.key)).sign_recoverable(digest, hasher=None)
    return SignedReading(key.address, cumulative_wh, timestamp, 27 + sig[64], sig[:32], sig[32:64])


def packed(reading: SignedReading, stray_bits: int = 0) -> Packed:
    word, r, vs = reading.as_tuple()
    return word | stray_bits << 88, r, vs


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
    token: str | None = None  # the market's ERC-20 currency; None: the native coin
    snapshot: str = ""
    history: dict[str, list[tuple[Packed, Reading]]] = field(default_factory=dict)
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
        self.account_page = 2  # ids per accountOf page
        self.offer_page = 2  # offers looked at per openOffers / dueOffers page

    def act(
        self, sender: str, name: str, args: tuple[Any, ...], apply: Callable[[], object], value: int = 0
    ) -> dict[str, Any] | None:
        """`apply` the action to the model; the contract must do the same, emitting the model's
        events, or revert the same way.

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
            assert not self.model.events, f"{name}{args}: the model emitted {self.model.events} and reverted"
            outcome = self._simulate(tx, "pending", mined_at)
            assert outcome == (expected.name, expected.error_args), (
                f"{name}{args} from {sender}: {outcome} != {expected}"
            )
            self.paths.add(f"{name} reverted with {expected.name}")
        receipt: dict[str, Any] = self.node.request("eth_sendTransactionSync", {**tx, "gas": hex(GAS)})
        assert quantity(receipt["blockTimestamp"]) == mined_at, "the block's timestamp is not the model's"
        self.model.mined()
        if expected is not None:
            assert int(receipt["status"], 16) == 0, f"{name}{args} did not revert"
            self.model.events.clear()
            return None
        if int(receipt["status"], 16) != 1:
            before = hex(int(receipt["blockNumber"], 16) - 1)
            raise AssertionError(f"{name}{args} from {sender} reverted: {self._simulate(tx, before, mined_at)}")
        market = self.world.market.lower()
        emitted = [self.abi.event(log) for log in receipt["logs"] if log["address"].lower() == market]
        assert emitted == self.model.events, f"{name}{args} from {sender}: events"
        self.model.events.clear()
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

    def settle(self, readings: list[tuple[Packed, Reading, Skip]]) -> None:
        """Relay `readings`, which the model has applied (`MarketModel.apply_reading`) already."""
        accepted = [r for _, r, outcome in readings if outcome == Skip.NONE]
        self.act(self.world.relayer, "settle", ([p for p, _, _ in readings],), partial(self.model.settled, accepted))
        for packed_reading, reading, outcome in readings:
            self.paths.add(f"reading {outcome.name}")
            if outcome == Skip.NONE:
                self.history.setdefault(reading.meter, []).append((packed_reading, reading))

    def withdraw(self, sender: str, claim_ids: list[int] | None) -> None:
        """`withdraw`, or `claimAndWithdraw(claim_ids)`: the sender receives the model's amount."""
        amount: list[int] = []
        if claim_ids is None:
            receipt = self.act(sender, "withdraw", (), lambda: amount.append(self.model.withdraw(sender)))
        else:
            model_call = partial(self.model.claim_and_withdraw, sender, claim_ids)
            receipt = self.act(sender, "claimAndWithdraw", (claim_ids,), lambda: amount.append(model_call()))
        if receipt is None:
            return
        block = int(receipt["blockNumber"], 16)
        before, after = (
            int(b, 16) for b in self.node.batch([self.funds_of(sender, hex(n)) for n in (block - 1, block)])
        )
        # Gas is paid in the native coin: it shows in the currency's balance only in a native market.
        fee = 0 if self.world.token else int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
        assert after - before == amount[0] - fee

    def funds_of(self, account: str, block: str) -> tuple[str, list[Any]]:
        """The JSON-RPC call that reads `account`'s balance of the market's currency at `block`."""
        token = self.world.token
        if token is None:
            return ("eth_getBalance", [account, block])
        return ("eth_call", [{"to": token, "data": "0x70a08231" + f"{address_word(account):064x}"}, block])

    # ------------------------------------------------------------------ the check after each step

    def check(self) -> None:
        """The contract's books, statuses and meters equal the model's, to the wei, and its balance
        is all escrows plus all credits."""
        model, abi, world = self.model, self.abi, self.world
        self.paths.update(model.notes)
        model.notes.clear()
        views = self.views()
        results_of = self.node.start_batch(
            [
                self.funds_of(world.market, "latest"),
                multicall(world.market, [abi.calldata(name, *args) for name, args in views]),
            ]
        )
        # While anvil answers: what the model expects of each view.
        model_view = self.model_views()
        expected = [b"".join(w.to_bytes(32) for w in model_view(name, args)) for name, args in views]
        balance, output = results_of()
        results = multicall_results(output)
        assert len(results) == len(views)
        for (name, args), (ok, data) in zip(views, results, strict=True):
            assert ok, f"{name}{args} reverted: {abi.error('0x' + data.hex()) if len(data) >= 4 else data!r}"

        # Conservation, from the contract's own views: every wei it holds is someone's escrow or
        # credit (credit and bid escrow once per account, its connections' money summed over its pages).
        held = 0
        for (name, args), (_, data) in zip(views, results, strict=True):
            if name == "accountOf" and args[2] == self.account_page:
                _, credit, bid_escrow, _, unclaimed, escrow, *_ = words(data)
                held += unclaimed + escrow + (credit + bid_escrow if args[1] == 0 else 0)
        assert int(balance, 16) == held == model.balance, "balance != escrows + credits"

        for (name, args), want, (_, data) in zip(views, expected, results, strict=True):
            assert data == want, f"{name}{args}: {words(data)} != {words(want)}"

    def views(self) -> list[tuple[str, tuple[int | str, ...]]]:
        """Every view the check reads (name, arguments): the counters; every actor's credit, its
        `accountOf` in one page and page by page; every offer, connection and meter; the unfinalized
        offers as `openOffers` and `dueOffers`, in one page and looking at `offer_page` per page."""
        model, world = self.model, self.world
        ids = sorted(model.records)
        views: list[tuple[str, tuple[int | str, ...]]] = [("lastOfferId", ()), ("unfinalizedOfferCount", ())]
        for account in world.actors:
            views += [("creditOf", (account,)), ("accountOf", (account, 0, 50))]
            views += [("accountOf", (account, cursor, self.account_page)) for cursor in self.account_cursors(account)]
        for i in ids:
            views.append(("getOffer", (i,)))
            if model.records[i].status >= Status.ACTIVE:
                views.append(("getConnection", (i,)))
        views += [("meterOf", (key.address,)) for key in world.meters]
        unfinalized = [i for i in ids if model.records[i].status == Status.BIDDING]
        pages = [(0, 100)] + [
            (after, self.offer_page) for after in [0, *unfinalized[self.offer_page - 1 :: self.offer_page]]
        ]
        return views + [(name, page) for name in ("openOffers", "dueOffers") for page in pages]

    def model_views(self) -> Callable[[str, tuple[int | str, ...]], list[int]]:
        """What each view returns, as the model sees it now: (name, arguments) -> its ABI words."""
        model = self.model
        offers = {i: self.offer_words(rec) for i, rec in model.records.items()}
        unfinalized = sorted(i for i, r in model.records.items() if r.status == Status.BIDDING)

        def view(name: str, args: tuple[int | str, ...]) -> list[int]:
            match name, args:
                case "lastOfferId", ():
                    return [len(model.records)]
                case "unfinalizedOfferCount", ():
                    return [len(unfinalized)]
                case "creditOf", (str(account),):
                    return [model.credit.get(account, 0)]
                case "accountOf", (str(account), int(cursor), int(limit)):
                    return self.account_words(account, cursor, limit)
                case "getOffer", (int(offer_id),):
                    return offers[offer_id]
                case "getConnection", (int(offer_id),):
                    return self.connection_words(model.records[offer_id])
                case "meterOf", (str(address),):
                    m = model.meters.get(address)
                    if m is None:
                        return [0] * 6
                    return [address_word(m.owner), m.meter_id, m.registered, m.last_wh, m.last_ts, model.filling(m)]
                case "openOffers" | "dueOffers", (int(after), int(limit)):
                    # Looks at `limit` unfinalized offers after `after`; keeps those whose bidding
                    # is over (due) or not (open) at the latest block.
                    start = unfinalized.index(after) + 1 if after else 0
                    looked = unfinalized[start : start + limit]
                    due = name == "dueOffers"
                    page = [i for i in looked if (model.block_time >= model.records[i].bidding_ends) == due]
                    more = start + limit < len(unfinalized)
                    # (OfferView[] page, uint256 nextAfterId): array offset, nextAfterId, length, items
                    return [0x40, looked[-1] if more else 0, len(page), *(w for i in page for w in offers[i])]
            raise AssertionError(f"no model of {name}{args}")

        return view

    def account_cursors(self, account: str) -> list[int]:
        """The cursor of each `accountOf` page of `account_page` ids, as an app reads them: 0, then
        each page's `nextCursor` (the check asserts that the contract returns these)."""
        return [0, *self.model.open_ids.get(account, [])[self.account_page :: self.account_page]]

    def account_words(self, account: str, cursor: int, limit: int) -> list[int]:
        """`accountOf(account, cursor, limit)` as the model sees it."""
        model = self.model
        ids = model.open_ids.get(account, [])
        start = ids.index(cursor) if cursor else 0
        page = ids[start : start + limit]
        records = [model.records[i] for i in page]
        unclaimed = sum(model.unclaimed(r) for r in records if r.seller == account)
        escrow = sum(model.escrow_left(r) for r in records if r.seller != account)
        next_cursor = ids[start + limit] if start + limit < len(ids) else 0
        credit, bid_escrow = model.credit.get(account, 0), model.bid_escrow.get(account, 0)
        # (credit, bidEscrow, ids, unclaimedWei, escrowWei, nextCursor): a dynamic struct behind its
        # offset; the array behind its offset from the struct's start (six words), length, items
        return [0x20, credit, bid_escrow, 0xC0, unclaimed, escrow, next_cursor, len(page), *page]

    def offer_words(self, rec: Record) -> list[int]:
        """`getOffer(rec.id)` as the model sees it."""
        offer = [rec.id, address_word(rec.seller), rec.energy_wh, rec.start_price, rec.price, address_word(rec.buyer)]
        return [*offer, rec.bidding_ends, self.model.min_next_bid(rec), rec.status]

    def connection_words(self, rec: Record) -> list[int]:
        """`getConnection(rec.id)` as the model sees it."""
        model = self.model
        delivered = model.delivered_now(rec)
        paid = pay_wei(rec.price, delivered)
        ended = rec.status >= Status.COMPLETED
        filling = not ended and model.meters[rec.meter].queue[0] == rec.id
        escrow_left = 0 if ended else escrow_wei(rec.price, rec.energy_wh) - paid
        parties = [address_word(rec.seller), address_word(rec.buyer), address_word(rec.meter)]
        return [
            rec.id,
            *parties,
            rec.price,
            rec.energy_wh,
            delivered,
            escrow_left,
            paid,
            rec.closed_at,
            rec.status,
            filling,
        ]


@pytest.fixture(scope="module")
def own_anvil() -> Iterator[Anvil]:
    """A node of this module's own, from block 0: anvil's time per block grows with the chain's
    height (here 1 ms at 0 blocks, 3 ms at 1,000, 11 ms at 6,000), and the tests that run before
    this module on the session's node mine thousands of blocks."""
    with Anvil(accounts=N_ACTORS + 2) as anvil:
        yield anvil


@pytest.fixture(scope="module", params=["native", "erc20"])
def world(request: pytest.FixtureRequest, own_anvil: Anvil) -> Iterator[World]:
    """The market in the native coin, or in an ERC-20 token (every actor holds plenty and has
    approved the market once, so that a bid stays one transaction and the model's clock exact)."""
    node = Node(own_anvil.url)
    w3 = Web3(Web3.HTTPProvider(own_anvil.url))
    accounts = [str(a) for a in w3.eth.accounts]
    registrar, relayer, actors = accounts[0], accounts[-1], accounts[1 : 1 + N_ACTORS]
    token = deploy_token(w3, registrar) if request.param == "erc20" else None
    currency = token.address if token is not None else NATIVE
    market = deploy_market(w3, registrar, timestep=TIMESTEP, min_bid_increment=MIN_BID_INCREMENT, currency=currency)
    if token is not None:
        for actor in actors:
            w3.eth.wait_for_transaction_receipt(token.functions.mint(actor, 10**30).transact({"from": registrar}))
            w3.eth.wait_for_transaction_receipt(
                token.functions.approve(market.address, 2**256 - 1).transact({"from": actor})
            )
    domain = Domain(chain_id=w3.eth.chain_id, contract=market.address)
    meters = [meter_key(i) for i in range(N_METERS)]
    assert fast_sign(meters[0], domain, 5, 7) == sign_reading(meters[0].key, domain, 5, 7)
    abi = Abi(artifact()["abi"])
    constants = {
        "timestep": TIMESTEP,
        "minBidIncrement": MIN_BID_INCREMENT,
        "MAX_BIDDING_SECONDS": MAX_BIDDING_SECONDS,
        "MAX_CLOCK_SKEW": MAX_CLOCK_SKEW,
        "MAX_OFFER_WH": MAX_OFFER_WH,
        "MAX_READING_WH": MAX_READING_WH,
        "MAX_METER_CONNECTIONS": MAX_METER_CONNECTIONS,
        "IDLE_TIMESTEPS": IDLE_TIMESTEPS,
    }
    calls = [("eth_call", [{"to": market.address, "data": abi.calldata(name)}, "latest"]) for name in constants]
    assert dict(zip(constants, (int(r, 16) for r in node.batch(calls)), strict=True)) == constants

    # From here on every block is one second after the previous one, unless the test travels.
    node.request("anvil_setBlockTimestampInterval", 1)
    node.set_next_timestamp(node.latest_timestamp() + 1)
    model = MarketModel(registrar, node.latest_timestamp() + 1, token=token is not None)
    world = World(
        node, abi, market.address, domain, registrar, relayer, actors, meters, model, token.address if token else None
    )
    driver = Driver(world, model)
    for i in range(INITIAL_METERS):
        meter, owner = meters[i].address, actors[i]
        driver.act(registrar, "registerMeter", (meter, owner), partial(model.register_meter, registrar, meter, owner))
    first = [fast_sign(meters[i], domain, 1000 * i + 500, model.time - 60) for i in range(INITIAL_METERS)]
    readings = [Reading(r.meter, r.cumulative_wh, r.timestamp, signed_by_meter=True) for r in first]
    driver.settle([(packed(s), r, model.apply_reading(r)) for s, r in zip(first, readings, strict=True)])
    assert all(m.last_ts for m in model.meters.values())
    driver.check()
    world.history = driver.history
    world.snapshot = node.request("evm_snapshot")
    try:
        yield world
    finally:
        node.request("evm_revert", world.snapshot)
        node.request("anvil_removeBlockTimestampInterval")
        node.close()


# ---------------------------------------------------------------------------------- strategies

actors = st.integers(0, N_ACTORS - 1)
anyone = st.integers(0, N_ACTORS)  # N_ACTORS stands for the relayer, a third party
picks = st.integers(0, 2**16)
mostly_fit = st.sampled_from(["fit"] * 6 + ["any", "unknown"])
mostly_true = st.sampled_from([True] * 5 + [False])
energies = st.one_of(st.integers(1, 3000), st.sampled_from([1, 999, 1000, 1001, MAX_OFFER_WH]))
# Wei per kWh: tiny prices make the rounding of escrow (up) and payment (down) visible.
start_prices = st.one_of(st.integers(1, 10**6), st.integers(10**9, 10**13), st.sampled_from([1, 999, 10**12 + 7]))
bidding_times = st.one_of(st.integers(1, 2000), st.sampled_from([TIMESTEP, MAX_BIDDING_SECONDS]))
offer_flaws = st.sampled_from([None] * 9 + ["energy", "too_much_energy", "price", "no_time", "long_time"])
bid_extras = st.one_of(st.just(0), st.integers(1, 10**6), st.integers(10**9, 5 * 10**9))
travel_steps = st.one_of(st.integers(1, 120), st.integers(TIMESTEP - 50, TIMESTEP + 100), st.integers(1800, 20_000))
wh_steps = st.one_of(st.integers(0, 50), st.integers(100, 3000))
seconds_back = st.sampled_from([0, 0, 1, 30, 299, 600, TIMESTEP - 1, TIMESTEP + 1, 1800])
READING_KINDS = (
    ["valid"] * 6
    + ["zero"] * 2
    + ["cap"] * 3
    + ["skew", "future", "replay", "decrease", "stale", "bad_signer", "other_domain", "tampered", "high_s"]
    + ["zero_r", "malformed", "out_of_range", "at_max"]
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
        # evm_revert went back to the snapshot's block; time moves on from there.
        self.model = copy.deepcopy(self.world.model)
        self.world.node.set_next_timestamp(self.model.time)
        self.driver = Driver(self.world, self.model)

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

    def selling(self, account: str) -> list[Record]:
        """The account's open connections as seller."""
        records = map(self.model.records.__getitem__, self.model.open_ids.get(account, []))
        return [r for r in records if r.seller == account and r.open]

    def has_reported_meter(self) -> bool:
        return any(m.registered and m.last_ts for m in self.model.meters.values())

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

    def bid_value(self, price: int, energy_wh: int) -> int:
        """The value a correct bid sends: its escrow in a native market, nothing in a token market."""
        return 0 if self.world.token is not None else escrow_wei(price, energy_wh)

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
        own = [m for m in self.model.meters.values() if m.owner == sender and m.last_ts]
        meter = next((m for m in own if len(m.queue) < MAX_METER_CONNECTIONS), own[0])
        price = self.model.min_next_bid(rec) + extra
        self.do_bid(sender, rec.id, price, meter.address, self.bid_value(price, rec.energy_wh))
        return True

    def do_finalize(self, caller: str, offer_id: int) -> None:
        self.driver.act(caller, "finalize", (offer_id,), partial(self.model.finalize, offer_id))

    def do_settle(self, specs: list[tuple[int, bool, str, int, int]]) -> None:
        # Made and applied one by one: a later reading of the same meter builds on the earlier ones.
        readings: list[tuple[Packed, Reading, Skip]] = []
        for spec in specs:
            packed_reading, reading = self.make_reading(*spec)
            readings.append((packed_reading, reading, self.model.apply_reading(reading)))
        self.driver.settle(readings)

    def make_reading(self, index: int, busy: bool, kind: str, wh: int, back: int) -> tuple[Packed, Reading]:
        """A signed reading of meter `index` (or of a meter filling a connection, when `busy`),
        shaped by `kind`; packed for `settle`, and as the model sees it."""
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
            return old[wh % len(old)]
        elif kind == "decrease":
            cumulative = max(last_wh - 1 - wh % 10, 0)
        elif kind == "stale":
            timestamp = max(last_ts, 1)
        elif kind == "out_of_range":
            cumulative = MAX_READING_WH + 1 + wh
        elif kind == "at_max":
            cumulative = MAX_READING_WH
        signed = fast_sign(key, world.domain, cumulative, timestamp)
        meter = key.address
        if kind == "bad_signer":
            other = fast_sign(world.meters[(index + 1) % N_METERS], world.domain, cumulative, timestamp)
            signed = SignedReading(meter, cumulative, timestamp, other.v, other.r, other.s)
        elif kind == "other_domain":
            signed = fast_sign(
                key, Domain(chain_id=world.domain.chain_id + 1, contract=world.domain.contract), cumulative, timestamp
            )
        elif kind == "tampered":
            signed = SignedReading(meter, cumulative + 1, timestamp, signed.v, signed.r, signed.s)
            return packed(signed), Reading(meter, cumulative + 1, timestamp, signed_by_meter=False)
        elif kind == "high_s":  # the same signature, malleated: ecrecover accepts it, the contract must not
            high_s = (SECP256K1_N - int.from_bytes(signed.s, "big")).to_bytes(32, "big")
            signed = SignedReading(meter, cumulative, timestamp, 55 - signed.v, signed.r, high_s)
        elif kind == "zero_r":
            signed = SignedReading(meter, cumulative, timestamp, signed.v, bytes(32), signed.s)
        elif kind == "malformed":  # validly signed, but with bits set that the signature does not cover
            stray = 1 + wh % 255
            return packed(signed, stray), Reading(meter, cumulative, timestamp, signed_by_meter=True, stray_bits=stray)
        forged = kind in ("bad_signer", "other_domain", "high_s", "zero_r")
        return packed(signed), Reading(meter, cumulative, timestamp, signed_by_meter=not forged)

    # ------------------------------------------------------------------ set-up of each example

    @initialize(
        offers=st.lists(
            st.tuples(actors, energies, start_prices, st.integers(60, 1800), picks), min_size=1, max_size=4
        ),
        award=mostly_true,
        account_page=st.integers(1, 3),
        offer_page=st.integers(1, 3),
    )
    def open_market(
        self, offers: list[tuple[int, int, int, int, int]], award: bool, account_page: int, offer_page: int
    ) -> None:
        """A few offers, most with a bid, usually awarded: every example starts with a market to act on."""
        self.driver.account_page, self.driver.offer_page = account_page, offer_page
        for seller, energy, price, seconds, pick in offers:
            self.do_create_offer(self.actor(seller), energy, price, seconds)
            if pick % 4:
                self.do_valid_bid(self.model.records[len(self.model.records)], pick, pick % 3 * MIN_BID_INCREMENT)
        if award:
            self.to_time(max(r.bidding_ends for r in self.model.records.values()))
            for offer_id in sorted(self.model.records):
                self.do_finalize(self.actor(N_ACTORS), offer_id)

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

    @rule(pick=picks, kind=mostly_fit, to=st.sampled_from(["other"] * 4 + ["same", "none"]), other=actors)
    def reassign_meter(self, pick: int, kind: str, to: str, other: int) -> None:
        """Revoke a meter, usually one a pending bid names, and register it to another owner (or back
        to its owner, or not at all): the award must then refuse that bid, never bill the new owner."""
        model, registrar = self.model, self.world.registrar
        backing = sorted(
            {r.meter for r in model.records.values() if r.status == Status.BIDDING and r.buyer != ZERO_ADDRESS}
        )
        pool = backing if kind == "fit" and backing else [k.address for k in self.world.meters]
        address = pool[pick % len(pool)]
        owner = model.meter_owner(address)
        self.driver.act(registrar, "revokeMeter", (address,), lambda: model.revoke_meter(registrar, address))
        if to == "none":
            return
        others = [a for a in self.world.actors if a != owner]
        new_owner = owner if to == "same" and owner != ZERO_ADDRESS else others[other % len(others)]
        self.driver.act(
            registrar,
            "registerMeter",
            (address, new_owner),
            lambda: model.register_meter(registrar, address, new_owner),
        )

    # ------------------------------------------------------------------ offers

    @rule(seller=actors, energy=energies, price=start_prices, seconds=bidding_times, flaw=offer_flaws)
    def create_offer(self, seller: int, energy: int, price: int, seconds: int, flaw: str | None) -> None:
        if flaw in ("energy", "too_much_energy"):
            energy = 0 if flaw == "energy" else MAX_OFFER_WH + 1
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
        if self.world.token is not None and escrow == "exact":
            value = 0  # a token market pulls the escrow; any value sent is wrong
        self.do_bid(sender, offer_id, amount, meter, value)

    @precondition(lambda self: self.has_reported_meter())
    @rule(
        count=st.integers(1, 4),
        pick=picks,
        energy=st.integers(1, 3000),
        price=start_prices,
        seconds=st.integers(2, 300),
        award=mostly_true,
    )
    def crowd_meter(self, count: int, pick: int, energy: int, price: int, seconds: int, award: bool) -> None:
        """Several sellers offer, one meter's owner wins them all, and (usually) they are awarded at
        once. Mostly the meter with the longest queue: its queue reaches its cap, at the bid or at
        the award."""
        model = self.model
        meters = sorted((m for m in model.meters.values() if m.registered and m.last_ts), key=lambda m: -len(m.queue))
        meter = meters[0 if pick % 4 else pick % len(meters)]
        buyer = meter.owner
        sellers = [a for a in self.world.actors if a != buyer]
        offered = []
        for n in range(count):
            self.do_create_offer(sellers[(pick + n) % len(sellers)], energy + n, price, seconds)
            rec = model.records[len(model.records)]
            offered.append(rec)
            self.do_bid(buyer, rec.id, rec.start_price, meter.address, self.bid_value(rec.start_price, rec.energy_wh))
        if award:
            self.to_time(max(r.bidding_ends for r in offered))
            for rec in offered:
                self.do_finalize(self.actor((pick + rec.id) % (N_ACTORS + 1)), rec.id)

    @rule(pick=picks, kind=mostly_fit, caller=anyone)
    def finalize(self, pick: int, kind: str, caller: int) -> None:
        model = self.model
        over = [i for i, r in model.records.items() if r.status == Status.BIDDING and r.bidding_ends <= model.time]
        offer_id = over[pick % len(over)] if kind == "fit" and over else self.target(pick, kind, (Status.BIDDING,))
        self.do_finalize(self.actor(caller), offer_id)

    # ------------------------------------------------------------------ time

    @rule(seconds=travel_steps, to_boundary=st.booleans(), pick=picks, offset=st.sampled_from([-1, 0, 1]))
    def travel(self, seconds: int, to_boundary: bool, pick: int, offset: int) -> None:
        """Forward by `seconds`, or to just before, at or just after the end of a bidding period, of
        a grace window or of a connection's idle period."""
        records = self.model.records.values()
        ends = [r.bidding_ends for r in records if r.status == Status.BIDDING]
        ends += [r.closed_at + TIMESTEP for r in records if r.status == Status.CLOSED]
        ends += [r.idle_at + 1 for r in records if r.status == Status.ACTIVE]  # the first second it may close
        future = sorted(t + offset for t in ends if t + offset > self.model.time)
        self.to_time(future[pick % len(future)] if to_boundary and future else self.model.time + seconds)

    # ------------------------------------------------------------------ delivery

    @rule(specs=st.lists(reading_specs, min_size=1, max_size=5))
    def settle(self, specs: list[tuple[int, bool, str, int, int]]) -> None:
        self.do_settle(specs)

    @rule(
        pick=picks,
        kind=mostly_fit,
        closer=st.sampled_from(["buyer"] * 4 + ["seller"] * 2 + ["other"]),
        other=anyone,
    )
    def close_connection(self, pick: int, kind: str, closer: str, other: int) -> None:
        """By its buyer; by its seller (preferably a connection whose idle period is over); or by
        anyone else."""
        model = self.model
        idle = [i for i, r in model.records.items() if r.status == Status.ACTIVE and model.time > r.idle_at]
        if closer == "seller" and kind == "fit" and idle:
            offer_id = idle[pick % len(idle)]
        else:
            offer_id = self.target(pick, kind, (Status.ACTIVE,))
        rec = model.records.get(offer_id)
        sender = self.actor(other)
        if rec is not None and closer != "other":
            sender = rec.seller if closer == "seller" or rec.buyer == ZERO_ADDRESS else rec.buyer
        self.driver.act(sender, "closeConnection", (offer_id,), lambda: model.close_connection(sender, offer_id))

    @rule(pick=picks, kind=mostly_fit, caller=anyone)
    def release(self, pick: int, kind: str, caller: int) -> None:
        offer_id = self.target(pick, kind, (Status.CLOSED,))
        self.driver.act(self.actor(caller), "release", (offer_id,), lambda: self.model.release(offer_id))

    @rule(pick=picks, kind=mostly_fit, caller=anyone)
    def claim(self, pick: int, kind: str, caller: int) -> None:
        offer_id = self.target(pick, kind, (Status.ACTIVE, Status.CLOSED))
        self.driver.act(self.actor(caller), "claim", (offer_id,), lambda: self.model.claim(offer_id))

    @rule(
        account=actors,
        with_money=mostly_true,
        how=st.sampled_from(["withdraw"] * 2 + ["claim_open"] * 2 + ["claim_any"]),
        id_picks=st.lists(picks, max_size=4),
    )
    def withdraw(self, account: int, with_money: bool, how: str, id_picks: list[int]) -> None:
        """`withdraw` (the stored credit only); `claimAndWithdraw` of the account's open ids, as an
        app lists them; or of any ids (others' connections, offers, unknown ids, repeats). Mostly by
        an actor with credit or payment to claim."""
        model = self.model
        rich = [a for a in self.world.actors if model.credit.get(a) or any(map(model.unclaimed, self.selling(a)))]
        sender = rich[account % len(rich)] if with_money and rich else self.actor(account)
        if how == "withdraw":
            self.driver.withdraw(sender, None)
        elif how == "claim_open":
            self.driver.withdraw(sender, list(model.open_ids.get(sender, [])))
        else:
            pool = [*model.records, len(model.records) + 1, 2**32 + 1]
            self.driver.withdraw(sender, [pool[p % len(pool)] for p in id_picks])

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
            self.do_finalize(self.actor(pick % (N_ACTORS + 1)), rec.id)
        elif rec.status == Status.ACTIVE and pick % 3:
            self.do_settle([(meter, False, "valid", wh, back)])
        elif rec.status == Status.ACTIVE:
            # Its buyer is done; or its seller gives up on a buyer who never drew anything.
            closer = rec.seller if model.time > rec.idle_at and pick % 2 else rec.buyer
            self.driver.act(closer, "closeConnection", (rec.id,), lambda: model.close_connection(closer, rec.id))
        elif model.time <= rec.closed_at + TIMESTEP and pick % 2:
            self.do_settle([(meter, False, "valid", wh, back)])
        else:
            # After the grace window: released, or ended by the meter's next reading.
            self.to_time(rec.closed_at + TIMESTEP + 1)
            if pick % 3 == 0:
                self.do_settle([(meter, False, "valid", wh, back)])
            else:
                caller = self.actor(pick % (N_ACTORS + 1))
                self.driver.act(caller, "release", (rec.id,), lambda: model.release(rec.id))

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
