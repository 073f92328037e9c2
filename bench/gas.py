"""Gas benchmark of the EnergyMarket contract: prints one JSON object to stdout.

Every figure is `gasUsed` from a receipt. The node is a fresh anvil whose clock is pinned (fixed
genesis timestamp, one second per block) and every key is derived from a fixed label, so a run
repeats to the gas unit.

- ``ops``: one trade in steady state. The market already holds an open offer and has seen a full
  trade by the same accounts, and each trade ends with every participant withdrawing everything,
  so each trade starts from the same storage state as the one before it.
- ``ops_at_<N>_offers``: the same trade after N more offers by N more sellers (most still open,
  some with bids, some awarded). Equal figures are the proof that no operation grows with the
  market.
- ``ops_holding_credit``: the same trade by accounts that keep credit in the market between
  trades, so their account's storage slot is never zero (no ``withdraw``: it would empty it).
- ``settle_gas_per_reading``: a batch of n readings from n meters, each filling an active
  connection, excluding the 21,000 gas every transaction pays; ``naive_gas_per_reading`` is the
  full cost of one transaction per reading, the design batching must beat.
- ``settle_worst_reading``: the dearest single reading there is: it ends the most connections a
  meter may hold (MAX_METER_CONNECTIONS), each from its own seller. Any batch of n readings costs
  at most n times it, and ``worst_readings_per_30m_block`` is how many fit a 30M-gas block.
- ``erc20``: the same figures for a market that settles in an ERC-20 token (DemoToken, OpenZeppelin),
  measured on the same node after the native ones. A bidder approves exactly the escrow before each
  bid (``approve``, a transaction of its own, not counted in ``bid``), every account of the trade
  holds tokens, and in both modes the market holds another bidder's escrow throughout, as a live
  market always does (a token balance going from zero costs more than one that stays nonzero).

python bench/gas.py [--offers 1000] [--batch-sizes 1,10,50,100,200] [--reference-batch 100]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from eth_utils.crypto import keccak
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.logs import DISCARD
from web3.types import RPCEndpoint, TxParams, TxReceipt, Wei

from devchain.anvil import Anvil
from devchain.deploy import artifact, deploy_market, deploy_token
from oracle.readings import Domain, sign_reading

GENESIS_TIMESTAMP: Final = 1_750_000_000
TIMESTEP: Final = 900
MIN_BID_INCREMENT: Final = 10**9
PRICE: Final = 10**14  # wei per kWh
OFFER_WH: Final = 5_000
BIDDING_SECONDS: Final = 600
OPEN_BIDDING_SECONDS: Final = 30 * 24 * 3600  # the contract's MAX_BIDDING_SECONDS: stays open all run
FIRST_READING_WH: Final = 1_000
DELIVERY_WH: Final = 10  # energy per reading; far below any connection's cap
TX_BASE_GAS: Final = 21_000
TX_GAS_LIMIT: Final = 1_000_000
BULK_TX_GAS_LIMIT: Final = 300_000  # a 30M gas block then holds 100 of them
SETTLE_GAS_PER_READING_LIMIT: Final = 40_000
FUNDS_WEI: Final = 10**22
RPC_BATCH: Final = 250
SETTLE_TARGET_MAX: Final = 12_000
CREATE_BID_FINALIZE_TARGET_MAX: Final = 250_000
TOKEN_CREATE_BID_FINALIZE_TARGET_MAX: Final = 300_000
TOKEN_SETTLE_MAX_DEVIATION: Final = 0.01  # settle per reading in token mode = native, within 1 %
TOKEN_DECIMALS: Final = 18
TOKEN_FLOAT: Final = 10**30  # tokens each trading account holds, like the native FUNDS_WEI
DEFAULT_BATCH_SIZES: Final = (1, 10, 50, 100, 200)
OPS: Final[tuple[str, ...]] = (
    "createOffer",
    "bid",
    "outbid",
    "finalize",
    "closeConnection",
    "release",
    "withdraw",
    "claim",
)

_CONNECTION_FIELDS: Final = [
    c["name"]
    for item in artifact()["abi"]
    if item["type"] == "function" and item["name"] == "getConnection"
    for c in item["outputs"][0]["components"]
]
_PAID: Final = _CONNECTION_FIELDS.index("paidWei")


def _key(label: str) -> LocalAccount:
    """A fixed key per label, so addresses, signatures and therefore calldata repeat run to run."""
    account: LocalAccount = Account.from_key(keccak(text=f"energykart-bench/{label}"))
    return account


def _address(label: str) -> ChecksumAddress:
    return Web3.to_checksum_address(keccak(text=f"energykart-bench/{label}")[12:])


def _nonzero_bytes(word: int) -> int:
    return sum(1 for byte in word.to_bytes(32, "big") if byte)


def _escrow(price: int, energy_wh: int) -> int:
    return (price * energy_wh + 999) // 1000


def _rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    response = w3.provider.make_request(RPCEndpoint(method), params)
    if "error" in response:
        raise RuntimeError(f"{method} failed: {response['error']}")
    return response["result"]


@dataclass(frozen=True, slots=True)
class Connection:
    id: int
    meter: LocalAccount


@dataclass
class Bench:
    """A deployed market on a node with a pinned clock, and the calls the benchmark makes."""

    w3: Web3
    provider: HTTPProvider
    market: Contract
    keeper: ChecksumAddress
    # The ERC-20 token the market settles in (None: the native coin), and who may mint it.
    token: Contract | None = None
    minter: ChecksumAddress | None = None
    meter_wh: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------ node

    def rpc(self, method: str, params: list[Any]) -> Any:
        return _rpc(self.w3, method, params)

    def rpc_batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Results of JSON-RPC calls sent in batches; raises on the first error."""
        results: list[Any] = []
        for start in range(0, len(calls), RPC_BATCH):
            chunk = [(RPCEndpoint(method), params) for method, params in calls[start : start + RPC_BATCH]]
            responses = self.provider.make_batch_request(chunk)
            if not isinstance(responses, list):
                raise RuntimeError(f"batch failed: {responses}")
            for (method, _), response in zip(chunk, responses, strict=True):
                if "error" in response:
                    raise RuntimeError(f"{method} failed: {response['error']}")
                results.append(response["result"])
        return results

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def jump_to(self, timestamp: int) -> None:
        """Mine a block at `timestamp`; later blocks follow it one second apart."""
        if timestamp <= self.now():
            raise RuntimeError(f"the chain is already past {timestamp}")
        self.rpc("evm_setNextBlockTimestamp", [timestamp])
        self.rpc("evm_mine", [])

    # ------------------------------------------------------------ transactions

    def send(self, fn: ContractFunction, sender: str, value: int = 0, gas: int = TX_GAS_LIMIT) -> TxReceipt:
        """Send one transaction and wait for it; raise if it reverted."""
        params: TxParams = {"from": Web3.to_checksum_address(sender), "value": Wei(value), "gas": gas}
        tx_hash = fn.transact(params)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            raise RuntimeError(f"{fn.fn_name} from {sender} reverted in transaction {tx_hash.to_0x_hex()}")
        return receipt

    def send_many(self, txs: Sequence[tuple[str, HexStr, int]], to: str | None = None) -> list[dict[str, Any]]:
        """Send (sender, calldata, value) transactions to the market (or to `to`) all at once, mine
        them, and return their receipts; raise if any reverted.

        Automining would mine them in a number of blocks that varies from run to run; instead they
        are mined on demand, and the clock then moves to a fixed time after the start (one second
        per transaction), so that what follows runs at the same times in every run."""
        start = self.now()
        senders = sorted({sender for sender, _, _ in txs})
        counts = self.rpc_batch([("eth_getTransactionCount", [s, "pending"]) for s in senders])
        nonces = {s: int(n, 16) for s, n in zip(senders, counts, strict=True)}
        requests: list[tuple[str, list[Any]]] = []
        for sender, data, value in txs:
            tx = {"from": sender, "to": to or self.market.address, "data": data, "gas": hex(BULK_TX_GAS_LIMIT)}
            tx |= {"value": hex(value), "nonce": hex(nonces[sender])}
            nonces[sender] += 1
            requests.append(("eth_sendTransaction", [tx]))
        self.rpc("evm_setAutomine", [False])
        try:
            hashes = self.rpc_batch(requests)
            receipts: list[dict[str, Any] | None] = [None] * len(hashes)
            while missing := [i for i, r in enumerate(receipts) if r is None]:
                if self.now() >= start + len(txs):  # every block holds at least one of them
                    raise RuntimeError(f"{len(missing)} of {len(hashes)} transactions were not mined")
                self.rpc("evm_mine", [])
                found = self.rpc_batch([("eth_getTransactionReceipt", [hashes[i]]) for i in missing])
                for i, receipt in zip(missing, found, strict=True):
                    receipts[i] = receipt
        finally:
            self.rpc("evm_setAutomine", [True])
        mined = [r for r in receipts if r is not None]
        failed = [r["transactionHash"] for r in mined if int(r["status"], 16) != 1]
        if failed:
            raise RuntimeError(f"{len(failed)} transactions reverted, the first: {failed[0]}")
        self.jump_to(start + len(txs) + 1)
        return mined

    # ------------------------------------------------------------ currency

    def escrow_value(self, escrow: int) -> int:
        """The msg.value of a bid bringing `escrow`: the escrow itself in a native market, nothing
        in a token market (the market pulls it)."""
        return escrow if self.token is None else 0

    def mint(self, amounts: Sequence[tuple[str, int]]) -> None:
        """Token market: mint each (account, amount), all at once."""
        if self.token is not None and self.minter is not None:
            self.send_many(
                [(self.minter, self.token.encode_abi("mint", [a, amount]), 0) for a, amount in amounts],
                to=self.token.address,
            )

    def fund_bids(self, escrows: Sequence[tuple[str, int]]) -> None:
        """Token market: give each (bidder, escrow of all its coming bids) the tokens and approve
        exactly that to the market, in bulk."""
        if self.token is None:
            return
        totals: dict[str, int] = {}
        for bidder, escrow in escrows:
            totals[bidder] = totals.get(bidder, 0) + escrow
        self.mint(list(totals.items()))
        self.send_many(
            [(b, self.token.encode_abi("approve", [self.market.address, total]), 0) for b, total in totals.items()],
            to=self.token.address,
        )

    def bid(self, offer_id: int, price: int, meter: str, bidder: str) -> tuple[int, int]:
        """One bid of OFFER_WH at `price`: (gas of the bid, gas of the approval a token bidder
        sends just before it, 0 in a native market)."""
        escrow = _escrow(price, OFFER_WH)
        approve = 0
        if self.token is not None:
            approve = self.send(self.token.functions.approve(self.market.address, escrow), bidder)["gasUsed"]
        receipt = self.send(self.market.functions.bid(offer_id, price, meter), bidder, self.escrow_value(escrow))
        return receipt["gasUsed"], approve

    def register(self, meters: Sequence[tuple[str, str]]) -> None:
        """Register each (meter, owner) pair."""
        registrar = self.market.functions.registrar().call()
        self.send_many([(registrar, self.market.encode_abi("registerMeter", list(pair)), 0) for pair in meters])

    # ------------------------------------------------------------ readings

    def report(self, deliveries: Sequence[tuple[LocalAccount, int]], gas: int | None = None) -> TxReceipt:
        """Settle one reading per meter, each `wh` above the meter's last one, timestamped at the block
        that settles it (a reading taken in the award's own second would be the new baseline)."""
        domain = Domain(chain_id=self.w3.eth.chain_id, contract=self.market.address)
        timestamp = self.now() + 1
        readings = []
        for meter, wh in deliveries:
            cumulative = self.meter_wh.get(meter.address, 0) + wh
            readings.append(sign_reading(meter.key, domain, cumulative, timestamp).as_tuple())
            self.meter_wh[meter.address] = cumulative
        gas = gas or TX_BASE_GAS + SETTLE_GAS_PER_READING_LIMIT * len(readings) + 100_000
        receipt = self.send(self.market.functions.settle(readings), self.keeper, gas=gas)
        skipped = self.market.events.ReadingSkipped().process_receipt(receipt, errors=DISCARD)
        if skipped:
            raise RuntimeError(f"settle skipped {len(skipped)} readings, the first: {dict(skipped[0]['args'])}")
        return receipt

    def paid(self, connections: Sequence[Connection]) -> list[int]:
        """Wei paid so far on each connection (claimed or not)."""
        with self.w3.batch_requests() as batch:
            for connection in connections:
                batch.add(self.market.functions.getConnection(connection.id))
            views: list[Any] = batch.execute()
        return [int(view[_PAID]) for view in views]

    def settle_delivering(self, connections: Sequence[Connection]) -> TxReceipt:
        """Settle one new reading per connection's meter and check each connection was paid for it."""
        before = self.paid(connections)
        receipt = self.report([(c.meter, DELIVERY_WH) for c in connections])
        after = self.paid(connections)
        unpaid = [c.id for c, b, a in zip(connections, before, after, strict=True) if a <= b]
        if unpaid:
            raise RuntimeError(f"settle moved no payment on connections {unpaid[:10]}")
        return receipt

    # ------------------------------------------------------------ market

    def last_offer_id(self) -> int:
        return int(self.market.functions.lastOfferId().call())

    def created_id(self, receipt: TxReceipt) -> int:
        return int(self.market.events.OfferCreated().process_receipt(receipt, errors=DISCARD)[0]["args"]["id"])


@dataclass(frozen=True, slots=True)
class Trader:
    """The accounts of the measured trade: a seller, a bidder who is outbid, and the winning buyer."""

    seller: ChecksumAddress
    bidder: ChecksumAddress
    bidder_meter: LocalAccount
    buyer: ChecksumAddress
    buyer_meter: LocalAccount


def trade(bench: Bench, t: Trader, *, withdraw: bool = True) -> tuple[dict[str, int], int, int]:
    """One full trade; returns the gas by operation, the offer id, and the gas of the approval a
    token bidder sends before its bid (0 in a native market). With `withdraw`, the trade ends with
    every participant withdrawing everything, back to the state it started from."""
    m = bench.market.functions
    gas: dict[str, int] = {}
    receipt = bench.send(m.createOffer(OFFER_WH, PRICE, BIDDING_SECONDS), t.seller)
    gas["createOffer"] = receipt["gasUsed"]
    offer_id = bench.created_id(receipt)
    gas["bid"], approve = bench.bid(offer_id, PRICE, t.bidder_meter.address, t.bidder)
    gas["outbid"], _ = bench.bid(offer_id, PRICE + MIN_BID_INCREMENT, t.buyer_meter.address, t.buyer)
    bench.jump_to(bench.now() + BIDDING_SECONDS)
    gas["finalize"] = bench.send(m.finalize(offer_id), bench.keeper)["gasUsed"]
    connection = Connection(offer_id, t.buyer_meter)
    bench.settle_delivering([connection])
    gas["claim"] = bench.send(m.claim(offer_id), bench.keeper)["gasUsed"]
    bench.settle_delivering([connection])  # the release then pays the seller too, not only refunds
    gas["closeConnection"] = bench.send(m.closeConnection(offer_id), t.buyer)["gasUsed"]
    bench.jump_to(bench.now() + TIMESTEP + 1)
    gas["release"] = bench.send(m.release(offer_id), bench.keeper)["gasUsed"]
    if withdraw:
        gas["withdraw"] = bench.send(m.withdraw(), t.seller)["gasUsed"]
        for account in (t.bidder, t.buyer):
            bench.send(m.withdraw(), account)
    ops = {name: gas[name] for name in OPS if name in gas}
    ops["createOffer+bid+finalize"] = gas["createOffer"] + gas["bid"] + gas["finalize"]
    return ops, offer_id, approve


def populate(bench: Bench, offers: int, connections: int, align_with: int) -> tuple[dict[str, int], list[Connection]]:
    """Add at least `offers` offers, one per new seller: `connections` of them awarded (each to its
    own buyer and meter), some more with bids, the rest open. Returns a summary and the connections.

    Calldata costs 4 gas per zero byte and 16 per other byte, so an offer id of 1,004 would cost 12
    gas more to pass than an id of 3, whatever the contract does. A few offers are added so that the
    next trade's id has as many nonzero bytes as `align_with`, the id of the trade it is compared to.
    """
    m = bench.market.functions
    first_id = bench.last_offer_id() + 1
    total = offers
    while _nonzero_bytes(first_id + total) != _nonzero_bytes(align_with):
        total += 1
    with_bids = (offers - connections) // 5
    sellers = [_address(f"seller/{i}") for i in range(total)]
    buyers = [_address(f"buyer/{k}") for k in range(connections)]
    meters = [_key(f"buyer-meter/{k}") for k in range(connections)]
    bench.rpc_batch([("anvil_setBalance", [a, hex(FUNDS_WEI)]) for a in [*sellers, *buyers]])
    bench.mint([(b, TOKEN_FLOAT) for b in buyers])
    bench.register([(meter.address, b) for meter, b in zip(meters, buyers, strict=True)])
    for start in range(0, connections, 100):
        bench.report([(meter, FIRST_READING_WH) for meter in meters[start : start + 100]])

    # Creating and bidding take one second per transaction (see send_many): bidding on the offers
    # to award outlasts both, and the award comes once it has ended for all of them.
    started = bench.now()
    award_bidding = total + connections + with_bids + BIDDING_SECONDS
    created = bench.send_many(
        [
            (
                seller,
                bench.market.encode_abi(
                    "createOffer", [OFFER_WH, PRICE, award_bidding if i < connections else OPEN_BIDDING_SECONDS]
                ),
                0,
            )
            for i, seller in enumerate(sellers)
        ]
    )
    offer_ids = [int(r["logs"][0]["topics"][1], 16) for r in created]
    escrow = _escrow(PRICE, OFFER_WH)
    bids = range(connections + with_bids)
    bench.fund_bids([(buyers[i % connections], escrow) for i in bids])
    bench.send_many(
        [
            (
                buyers[i % connections],
                bench.market.encode_abi("bid", [offer_ids[i], PRICE, meters[i % connections].address]),
                bench.escrow_value(escrow),
            )
            for i in bids
        ]
    )
    bench.jump_to(started + 2 * award_bidding)
    bench.send_many(
        [(bench.keeper, bench.market.encode_abi("finalize", [offer_ids[k]]), 0) for k in range(connections)]
    )
    summary = {
        "offers": bench.last_offer_id(),
        "sellers": total,
        "open_offers": int(m.unfinalizedOfferCount().call()),
        "open_offers_with_bids": with_bids,
        "active_connections": connections,
    }
    return summary, [Connection(offer_ids[k], meters[k]) for k in range(connections)]


def worst_reading(bench: Bench) -> int:
    """Gas (base cost excluded) of one reading that ends a full queue of 1-Wh connections."""
    m = bench.market.functions
    queue = int(m.MAX_METER_CONNECTIONS().call())
    buyer = _address("worst/buyer")
    meter = _key("worst/meter")
    sellers = [_address(f"worst/seller/{i}") for i in range(queue)]
    bench.rpc_batch([("anvil_setBalance", [a, hex(FUNDS_WEI)]) for a in [buyer, *sellers]])
    bench.register([(meter.address, buyer)])
    bench.report([(meter, FIRST_READING_WH)])
    created = bench.send_many(
        [(seller, bench.market.encode_abi("createOffer", [1, PRICE, BIDDING_SECONDS]), 0) for seller in sellers]
    )
    offer_ids = [int(r["logs"][0]["topics"][1], 16) for r in created]
    bench.fund_bids([(buyer, _escrow(PRICE, 1)) for _ in offer_ids])
    bench.send_many(
        [
            (buyer, bench.market.encode_abi("bid", [i, PRICE, meter.address]), bench.escrow_value(_escrow(PRICE, 1)))
            for i in offer_ids
        ]
    )
    bench.jump_to(bench.now() + BIDDING_SECONDS)
    bench.send_many([(bench.keeper, bench.market.encode_abi("finalize", [i]), 0) for i in offer_ids])
    receipt = bench.report([(meter, DELIVERY_WH)], gas=TX_GAS_LIMIT)
    ended = bench.market.events.ConnectionEnded().process_receipt(receipt, errors=DISCARD)
    if len(ended) != queue:
        raise RuntimeError(f"the worst reading ended {len(ended)} connections, not {queue}")
    return int(receipt["gasUsed"]) - TX_BASE_GAS


def settle_costs(
    bench: Bench, connections: Sequence[Connection], batch_sizes: Sequence[int], naive_readings: int
) -> tuple[dict[str, float], float]:
    """Gas per reading of batched settles (base cost excluded), and of one transaction per reading."""
    per_reading: dict[str, float] = {}
    for n in batch_sizes:
        receipt = bench.settle_delivering(connections[:n])
        per_reading[str(n)] = round((receipt["gasUsed"] - TX_BASE_GAS) / n, 1)
    singles = [bench.settle_delivering([c])["gasUsed"] for c in connections[:naive_readings]]
    return per_reading, round(sum(singles) / len(singles), 1)


def measure_market(
    bench: Bench,
    accounts: Sequence[ChecksumAddress],
    *,
    offers: int,
    batch_sizes: Sequence[int],
    naive_readings: int,
    reference_batch: int,
) -> dict[str, Any]:
    """The figures of the market of `bench`: its trade in steady state, before and after `offers`
    more offers, and its settlement. `accounts`: the seller, bidder, buyer and the resident bidder
    and seller of the trade (unlocked on the node)."""
    seller, bidder, buyer, resident, resident_bidder = accounts
    market = bench.market
    connections_needed = max(*batch_sizes, naive_readings)
    trader = Trader(seller, bidder, _key("bidder-meter"), buyer, _key("buyer-meter"))
    resident_meter = _key("resident-meter")
    bench.mint([(a, TOKEN_FLOAT) for a in (seller, bidder, buyer, resident_bidder)])
    bench.register(
        [
            (trader.bidder_meter.address, bidder),
            (trader.buyer_meter.address, buyer),
            (resident_meter.address, resident_bidder),
        ]
    )
    bench.report([(m, FIRST_READING_WH) for m in (trader.bidder_meter, trader.buyer_meter, resident_meter)])
    # A live market has open offers, and escrow in it: a new offer is appended behind an open one
    # (the trade's award unlinks it), and the market's balance never returns to zero.
    receipt = bench.send(market.functions.createOffer(OFFER_WH, PRICE, OPEN_BIDDING_SECONDS), resident)
    bench.bid(bench.created_id(receipt), PRICE, resident_meter.address, resident_bidder)
    trade(bench, trader)  # the first trade: every account and meter involved has been used
    ops, offer_id, approve = trade(bench, trader)
    # The same trade by accounts that keep credit in the market between trades: their account slot
    # is then never zero, and writing a nonzero slot costs 2,900 gas instead of 20,000.
    trade(bench, trader, withdraw=False)
    ops_holding_credit, _, _ = trade(bench, trader, withdraw=False)
    for account in (seller, bidder, buyer):
        bench.send(market.functions.withdraw(), account)

    market_summary, connections = populate(bench, offers, connections_needed, offer_id)
    ops_at, _, _ = trade(bench, trader)

    per_reading, naive = settle_costs(bench, connections, batch_sizes, naive_readings)
    worst = worst_reading(bench)
    figures: dict[str, Any] = {
        "ops": ops,
        f"ops_at_{offers}_offers": ops_at,
        "constant_cost": ops == ops_at,
        "ops_holding_credit": ops_holding_credit,
        "market_at_measure": market_summary,
        "settle_gas_per_reading": per_reading,
        "naive_gas_per_reading": naive,
        f"batch_saving_at_{reference_batch}": round(naive / per_reading[str(reference_batch)], 2),
        "settle_worst_reading": worst,
        "worst_readings_per_30m_block": (30_000_000 - TX_BASE_GAS) // worst,
    }
    if bench.token is not None:
        figures["approve"] = approve
        figures["token"] = {
            "name": bench.token.functions.name().call(),
            "symbol": bench.token.functions.symbol().call(),
            "decimals": bench.token.functions.decimals().call(),
        }
    return figures


def measure(
    url: str,
    *,
    offers: int = 1000,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    naive_readings: int = 10,
    reference_batch: int = 100,
) -> dict[str, Any]:
    """Run the whole benchmark against the anvil node at `url` (any fresh anvil; a pinned clock
    makes the figures repeat exactly): a native market, then a token market. Returns the report
    printed by `main`: the native figures at the top level, the token market's under "erc20"."""
    if reference_batch not in batch_sizes:
        raise ValueError(f"the reference batch {reference_batch} must be one of the batch sizes {batch_sizes}")
    connections_needed = max(*batch_sizes, naive_readings)
    if offers < connections_needed:
        raise ValueError(f"{offers} offers cannot open {connections_needed} connections")
    provider = HTTPProvider(url, request_kwargs={"timeout": 120})
    w3 = Web3(provider)
    _rpc(w3, "anvil_setBlockTimestampInterval", [1])  # before the first block: the clock never reads the wall
    _rpc(w3, "anvil_autoImpersonateAccount", [True])  # the sellers and buyers that fill the market
    registrar, keeper, *traders = list(w3.eth.accounts)[:7]

    def figures(bench: Bench) -> dict[str, Any]:
        return measure_market(
            bench,
            traders,
            offers=offers,
            batch_sizes=batch_sizes,
            naive_readings=naive_readings,
            reference_batch=reference_batch,
        )

    market = deploy_market(w3, registrar, timestep=TIMESTEP, min_bid_increment=MIN_BID_INCREMENT)
    native = figures(Bench(w3=w3, provider=provider, market=market, keeper=keeper))

    token = deploy_token(w3, registrar, decimals=TOKEN_DECIMALS)
    market = deploy_market(
        w3, registrar, timestep=TIMESTEP, min_bid_increment=MIN_BID_INCREMENT, currency=token.address
    )
    bench = Bench(w3=w3, provider=provider, market=market, keeper=keeper, token=token, minter=registrar)
    erc20 = figures(bench)

    at_reference = native["settle_gas_per_reading"][str(reference_batch)]
    token_at_reference = erc20["settle_gas_per_reading"][str(reference_batch)]
    deviation = abs(token_at_reference - at_reference) / at_reference
    create_bid_finalize = native["ops"]["createOffer+bid+finalize"]
    holding_total = native["ops_holding_credit"]["createOffer+bid+finalize"]
    token_create_bid_finalize = erc20["ops"]["createOffer+bid+finalize"]
    node = bench.rpc("anvil_nodeInfo", [])
    compiler = artifact()["compiler"]
    return {
        **native,
        "erc20": erc20,
        "targets": {
            f"settle_per_reading_at_{reference_batch}_max": SETTLE_TARGET_MAX,
            f"settle_per_reading_at_{reference_batch}": at_reference,
            f"settle_per_reading_at_{reference_batch}_met": at_reference <= SETTLE_TARGET_MAX,
            "create_bid_finalize_max": CREATE_BID_FINALIZE_TARGET_MAX,
            "create_bid_finalize": create_bid_finalize,
            "create_bid_finalize_met": create_bid_finalize <= CREATE_BID_FINALIZE_TARGET_MAX,
            "create_bid_finalize_holding_credit": holding_total,
            "create_bid_finalize_holding_credit_met": holding_total <= CREATE_BID_FINALIZE_TARGET_MAX,
            "erc20": {
                f"settle_per_reading_at_{reference_batch}_max": SETTLE_TARGET_MAX,
                f"settle_per_reading_at_{reference_batch}": token_at_reference,
                f"settle_per_reading_at_{reference_batch}_met": token_at_reference <= SETTLE_TARGET_MAX,
                "settle_deviation_from_native_max": TOKEN_SETTLE_MAX_DEVIATION,
                "settle_deviation_from_native": round(deviation, 5),
                "settle_equal_to_native_met": deviation <= TOKEN_SETTLE_MAX_DEVIATION,
                "create_bid_finalize_max": TOKEN_CREATE_BID_FINALIZE_TARGET_MAX,
                "create_bid_finalize": token_create_bid_finalize,
                "create_bid_finalize_met": token_create_bid_finalize <= TOKEN_CREATE_BID_FINALIZE_TARGET_MAX,
                "constant_cost_met": erc20["constant_cost"],
            },
        },
        "meta": {
            "solc": compiler["version"],
            "evm_version": compiler["settings"]["evmVersion"],
            "optimizer_runs": compiler["settings"]["optimizer"]["runs"],
            "anvil": bench.rpc("web3_clientVersion", []),
            "hardfork": node["hardFork"],
        },
    }


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offers", type=int, default=1000, help="offers added before the second measure")
    parser.add_argument("--batch-sizes", type=_sizes, default=DEFAULT_BATCH_SIZES, help="readings per settle")
    parser.add_argument("--reference-batch", type=int, default=100, help="batch size the targets apply to")
    args = parser.parse_args(argv)
    with Anvil(extra_args=("--timestamp", str(GENESIS_TIMESTAMP))) as node:
        report = measure(
            node.url, offers=args.offers, batch_sizes=args.batch_sizes, reference_batch=args.reference_batch
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
