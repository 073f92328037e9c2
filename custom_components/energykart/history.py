"""The market's history: its logs read in block ranges a hosted provider accepts, and the account's
running totals kept across restarts and reorganisations.

Hosted providers refuse an `eth_getLogs` over too many blocks or with too many results, each with a
text of its own. `LogReader` reads ranges of at most LOG_RANGE blocks, narrows a refused range to
the one the provider suggests or names (else to half), and asks only for the events it needs: the
history (blocks whose events no longer fire) needs just `ConnectionOpened` and `ConnectionEnded`,
new blocks the events that fire too, `Outbid` only for this account (its indexed bidder).
`Ledger` folds connections that ended before the reorganisation window into running totals.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContract
from web3.exceptions import Web3RPCError
from web3.types import FilterParams, LogReceipt

from .const import LOGGER, REORG_WINDOW
from .contract import EVENTS

# At most this many blocks per eth_getLogs (fewer once a provider names a smaller limit), and at
# most this many eth_getLogs calls per update: a long history is caught up over several updates.
LOG_RANGE = 1_000
LOG_CALLS_PER_UPDATE = 20

_TOPICS: Final = {name: topic.to_0x_hex() for topic, name in EVENTS.items()}
# What the totals need from blocks whose events no longer fire.
HISTORY_EVENTS: Final = ("ConnectionOpened", "ConnectionEnded")
# What fires for new blocks, of any account (the id alone names a connection in the last three).
MARKET_EVENTS: Final = ("OfferCreated", "ConnectionOpened", "ConnectionClosed", "ConnectionEnded", "ReadingsAccepted")

# A range the provider suggests: Alchemy's "this block range should work: [0x.., 0x..]", Infura's
# "Try with this block range [0x.., 0x..]", reth / Erigon's "retry with the range N-M".
_SUGGESTED_HEX = re.compile(r"\[\s*(0x[0-9a-f]+)\s*,\s*(0x[0-9a-f]+)\s*\]")
_SUGGESTED = re.compile(r"retry with the range (\d+)\s*-\s*(\d+)")
# A limit the provider states: "exceed maximum block range: 1000" (BSC, PublicNode), "query exceeds
# max block range 1000" (Erigon, reth), "eth_getLogs is limited to a 10,000 range" (QuickNode),
# "Max range: 800" (Cloudflare), "maximum is set to 2048" (Avalanche), "limit the query to at
# most 1000 blocks" (Coinbase), "block range is too wide (maximum 1024)" (Moonbeam), "maximum
# [from, to] blocks distance: 3000" (Ankr).
_LIMIT = re.compile(
    r"(?:max(?:imum)? block range:?|limited to an?|limited to|max range:?|maximum is set to|at most"
    r"|\(maximum|blocks distance:)\s*(\d[\d,]*)\s*(k\b)?"
)
# A refusal for size without a number: "query returned more than 10000 results" (Infura), "Log
# response size exceeded" (Alchemy), "block range is too large" / "range too large" (QuickNode,
# Base, Optimism), "block range is too wide" (Ankr), "query exceeds max results" (llamarpc),
# "logs matched by query exceeds limit of 10000" (Arbitrum), "Query timeout exceeded" (Alchemy).
_TOO_LARGE = re.compile(
    r"too large|too wide|too big|more than \d+ results|response size|max results|exceeds? limit"
    r"|range limit|block range|too many blocks|timeout|timed out"
)
# Throttling is not about the range: narrowing would only spend more calls.
_THROTTLED = re.compile(r"rate.?limit|too many requests|requests per|request rate|daily request|credits|capacity")
_RESULT_LIMIT = re.compile(r"results?\b|response size|logs matched|timeout|timed out")
LIMIT_EXCEEDED = -32005  # EIP-1474: the request exceeds a defined limit


def narrower_range(err: Web3RPCError, blocks: int) -> tuple[int, bool] | None:
    """After a provider refused an eth_getLogs over `blocks` blocks: how many blocks to ask for
    instead, and whether the provider limits the range itself (rather than the results, which
    depend on the blocks). None when the error is not about the size of the query."""
    error = (err.rpc_response or {}).get("error")
    if not isinstance(error, dict) or blocks <= 1:
        return None
    message = str(error.get("message", "")).lower()
    data = error.get("data")
    if _THROTTLED.search(message):
        return None
    suggested: tuple[int, int] | None = None
    if found := _SUGGESTED_HEX.search(message):
        suggested = int(found[1], 16), int(found[2], 16)
    elif found := _SUGGESTED.search(message):
        suggested = int(found[1]), int(found[2])
    elif isinstance(data, dict) and isinstance(data.get("from"), str) and isinstance(data.get("to"), str):
        suggested = int(data["from"], 16), int(data["to"], 16)  # Infura's -32005 carries its range as data
    if suggested is not None:
        size = suggested[1] - suggested[0] + 1
        return (size if 0 < size < blocks else blocks // 2), False
    range_limit = not _RESULT_LIMIT.search(message)
    if found := _LIMIT.search(message):
        limit = int(found[1].replace(",", "")) * (1000 if found[2] else 1)
        if 0 < limit < blocks:
            return limit, range_limit
        return (blocks - 1 if limit == blocks else blocks // 2), range_limit
    if _TOO_LARGE.search(message) or error.get("code") == LIMIT_EXCEEDED:
        return blocks // 2, range_limit
    return None


@dataclass(frozen=True, slots=True)
class MarketEvent:
    """A decoded contract event.

    `key` names the log across reorganisations: its transaction, its name and its rank among the
    transaction's events of that name. A transaction mined again in a replacing block emits its
    events under the same keys, even when their data changed with the block (a timestamp).
    """

    name: str
    block: int
    args: dict[str, Any]
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LogRead:
    """The market's events of the blocks up to `last_block` from where a read started."""

    events: tuple[MarketEvent, ...]
    last_block: int


type Topics = list[list[str] | str | None]


class LogReader:
    """Reads the market's logs in ranges, narrowing a range the provider refuses."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        contract: AsyncContract,
        account: ChecksumAddress,
        guard: Callable[[Awaitable[Any]], Awaitable[Any]],
    ) -> None:
        self._w3 = w3
        self._contract = contract
        self._guard = guard
        account_topic = "0x" + account[2:].lower().rjust(64, "0")
        self._history: list[Topics] = [[[_TOPICS[name] for name in HISTORY_EVENTS]]]
        self._live: list[Topics] = [
            [[_TOPICS[name] for name in MARKET_EVENTS]],
            [[_TOPICS["Outbid"]], None, account_topic],
        ]
        self.max_range = LOG_RANGE  # lowered for good when a provider names its range limit
        self._range = LOG_RANGE

    async def read(self, first: int, last: int, live_from: int) -> LogRead:
        """The events from `first` on: up to `last`, or fewer blocks once LOG_CALLS_PER_UPDATE calls
        are spent (but never stopping inside the reorganisation window, so the last block read is
        either `last` or one no reorganisation reaches). Blocks from `live_from` on are read for all
        the events that fire, those before it for what the totals need."""
        events: list[MarketEvent] = []
        done = first - 1
        calls = 0
        while done < last:
            if calls >= LOG_CALLS_PER_UPDATE and done < last - REORG_WINDOW:
                break
            live = done + 1 >= live_from
            end = min(last, done + self._range, last if live else live_from - 1)
            logs: list[LogReceipt] = []
            for topics in self._live if live else self._history:
                while True:
                    calls += 1
                    try:
                        found = await self._get_logs(topics, done + 1, end)
                        break
                    except Web3RPCError as err:
                        end = done + self._narrow(err, end - done)
                logs = [log for log in logs if log["blockNumber"] <= end] + found
            events += self._decode(sorted(logs, key=lambda log: (log["blockNumber"], log["logIndex"])))
            done = end
            self._range = min(self.max_range, 2 * self._range)
        return LogRead(events=tuple(events), last_block=done)

    async def _get_logs(self, topics: Topics, first: int, last: int) -> list[LogReceipt]:
        query: FilterParams = {
            "address": self._contract.address,
            "fromBlock": first,
            "toBlock": last,
            "topics": topics,
        }
        return list(await self._guard(self._w3.eth.get_logs(query)))

    def _narrow(self, err: Web3RPCError, blocks: int) -> int:
        """The blocks to ask for after a refusal of `blocks`; the error itself when narrowing cannot help."""
        narrowed = narrower_range(err, blocks)
        if narrowed is None:
            raise err
        size, range_limit = narrowed
        if range_limit:
            self.max_range = min(self.max_range, size)
        self._range = size
        LOGGER.debug("eth_getLogs over %s blocks refused (%s): reading %s", blocks, err, size)
        return size

    def _decode(self, logs: Iterable[LogReceipt]) -> list[MarketEvent]:
        """The market's events in `logs`, each keyed by its transaction, its name and its rank among them."""
        events: list[MarketEvent] = []
        ranks: Counter[tuple[str, str]] = Counter()
        for log in logs:
            if not log["topics"] or (name := EVENTS.get(HexBytes(log["topics"][0]))) is None:
                continue
            decoded = getattr(self._contract.events, name)().process_log(log)
            origin = (HexBytes(log["transactionHash"]).to_0x_hex(), name)
            key = (*origin, str(ranks[origin]))
            ranks[origin] += 1
            events.append(MarketEvent(name=name, block=int(log["blockNumber"]), args=dict(decoded["args"]), key=key))
        return events


@dataclass(frozen=True, slots=True)
class Totals:
    """Energy and money of the account's connections: as seller and as buyer."""

    sold_wh: int = 0
    bought_wh: int = 0
    earnings_wei: int = 0
    spending_wei: int = 0

    def plus(self, role: str, delivered_wh: int, paid_wei: int) -> Totals:
        if role == "seller":
            return Totals(self.sold_wh + delivered_wh, self.bought_wh, self.earnings_wei + paid_wei, self.spending_wei)
        return Totals(self.sold_wh, self.bought_wh + delivered_wh, self.earnings_wei, self.spending_wei + paid_wei)


@dataclass(frozen=True, slots=True)
class Ended:
    """A connection of the account that ended in `block`, a block a reorganisation may still replace."""

    block: int
    role: str
    delivered_wh: int
    paid_wei: int


@dataclass(slots=True)
class Ledger:
    """What the logs told of the account so far, from the history's first block to `cursor`.

    Connections that ended more than REORG_WINDOW blocks before the cursor are folded into
    `settled` (and forgotten); those that ended since are kept by block, so that reading a replaced
    window again replaces them rather than counting them twice.
    """

    cursor: int  # the last block whose logs are read
    settled_through: int  # the connections that ended up to this block are in `settled`
    cursor_hash: str | None = None  # the cursor block's hash when it was the head, to tell a reorganisation
    settled: Totals = field(default_factory=Totals)
    recent: dict[int, Ended] = field(default_factory=dict)
    roles: dict[int, tuple[str, str]] = field(default_factory=dict)  # seller and buyer of open connections

    @classmethod
    def starting_at(cls, block: int) -> Ledger:
        return cls(cursor=block - 1, settled_through=block - 1)

    def first_block(self, start: int, head: int, cursor_hash_now: str | None) -> int:
        """Where the next read starts: after the cursor, unless the chain changed what was read.

        A cursor block with another hash now was replaced by a reorganisation: the window before it
        is read again. A head below the cursor (a node restarted from an older state) is read again
        from the window before the head.
        """
        if head < self.cursor:
            return max(start, head - REORG_WINDOW)
        if self.cursor_hash is not None and cursor_hash_now != self.cursor_hash:
            return max(start, self.cursor - REORG_WINDOW)
        return self.cursor + 1

    def read(self, first: int, events: Iterable[MarketEvent], account: str) -> None:
        """Take in the events of the blocks from `first` on (again, for those read before)."""
        self.recent = {i: ended for i, ended in self.recent.items() if ended.block < first}
        for event in events:
            if event.block <= self.settled_through:
                continue  # already in the totals: a chain that went back further than the window
            args = event.args
            if event.name == "ConnectionOpened" and account in (args["seller"], args["buyer"]):
                self.roles[args["id"]] = (args["seller"], args["buyer"])
            elif event.name == "ConnectionEnded" and (role := self.role(args["id"], account)):
                self.recent[args["id"]] = Ended(event.block, role, args["deliveredWh"], args["paidWei"])

    def role(self, connection_id: int, account: str) -> str | None:
        seller, buyer = self.roles.get(connection_id, ("", ""))
        if seller == account:
            return "seller"
        if buyer == account:
            return "buyer"
        return None

    def advance(self, last_block: int, cursor_hash: str | None) -> None:
        """The logs up to `last_block` are read: fold what no reorganisation can change any more."""
        self.cursor = last_block
        self.cursor_hash = cursor_hash
        self.settled_through = max(self.settled_through, last_block - REORG_WINDOW - 1)
        for connection_id, ended in list(self.recent.items()):
            if ended.block <= self.settled_through:
                self.settled = self.settled.plus(ended.role, ended.delivered_wh, ended.paid_wei)
                del self.recent[connection_id]
                self.roles.pop(connection_id, None)

    def totals(self, open_connections: Iterable[tuple[int, str, int, int]]) -> Totals:
        """The totals with the connections still open: (id, role, delivered Wh, paid) each."""
        totals = self.settled
        for ended in self.recent.values():
            totals = totals.plus(ended.role, ended.delivered_wh, ended.paid_wei)
        for connection_id, role, delivered_wh, paid_wei in open_connections:
            if connection_id not in self.recent:
                totals = totals.plus(role, delivered_wh, paid_wei)
        return totals

    def as_dict(self) -> dict[str, Any]:
        """For JSON: amounts as strings, as they outgrow the 64 bits Home Assistant's JSON writer (orjson) takes."""
        return {
            "cursor": self.cursor,
            "cursor_hash": self.cursor_hash,
            "settled_through": self.settled_through,
            "settled": [str(amount) for amount in _fields(self.settled)],
            "recent": [
                [i, ended.block, ended.role, str(ended.delivered_wh), str(ended.paid_wei)]
                for i, ended in self.recent.items()
            ],
            "roles": [[i, seller, buyer] for i, (seller, buyer) in self.roles.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        return cls(
            cursor=int(data["cursor"]),
            settled_through=int(data["settled_through"]),
            cursor_hash=data["cursor_hash"],
            settled=Totals(*(int(amount) for amount in data["settled"])),
            recent={int(i): Ended(int(block), role, int(wh), int(paid)) for i, block, role, wh, paid in data["recent"]},
            roles={int(i): (seller, buyer) for i, seller, buyer in data["roles"]},
        )


def _fields(totals: Totals) -> tuple[int, int, int, int]:
    return totals.sold_wh, totals.bought_wh, totals.earnings_wei, totals.spending_wei
