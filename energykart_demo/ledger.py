"""What happened on the market, rebuilt from the contract's events (and its views for delivery).

The ledger is the demo's single record of offers, bids, connections and payments: the live view,
the traders, the report and the chart all read it. Each event also becomes one line of the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from eth_typing import ChecksumAddress

from energykart_demo.market import ConnectionState
from oracle.chain import MarketLog, Status, unpack

GWEI = 10**9
ETH = 10**18


def gwei(wei: int) -> str:
    return f"{wei / GWEI:,.0f}"


def eth(wei: int) -> str:
    return f"{wei / ETH:.6f}"


def price_text(units: int, symbol: str) -> str:
    """A price per kWh: gwei for ETH, the token itself (18 decimals) for a stablecoin."""
    return f"{gwei(units)} gwei/kWh" if symbol == "ETH" else f"{units / ETH:.4f} {symbol}/kWh"


def money_text(units: int, symbol: str) -> str:
    return f"{eth(units)} ETH" if symbol == "ETH" else f"{units / ETH:.4f} {symbol}"


@dataclass
class Offer:
    id: int
    seller: int  # home index
    energy_wh: int
    start_price: int
    bidding_ends: int
    step: int  # the timestep it was offered in
    price: int = 0  # highest bid, wei per kWh
    bidder: int | None = None
    bids: int = 0
    outbids: int = 0
    status: str = "bidding"  # bidding, awarded, expired


@dataclass
class Connection:
    id: int
    seller: int
    buyer: int
    price: int
    cap_wh: int
    step: int  # the timestep whose energy it was bought for
    delivered_wh: int = 0
    paid_wei: int = 0
    refund_wei: int = 0
    status: Status = Status.ACTIVE
    closed_at: int = 0
    closed_step: int | None = None
    ended_step: int | None = None
    deliveries: dict[int, int] = field(default_factory=dict)  # Wh delivered in each timestep
    accounted_wh: int = 0  # delivered Wh already put into `deliveries`

    @property
    def open(self) -> bool:
        return self.status in (Status.ACTIVE, Status.CLOSED)


@dataclass
class HomeBook:
    """One home's trading, in Wh and wei."""

    sold_wh: int = 0
    bought_wh: int = 0
    earned_wei: int = 0
    paid_wei: int = 0
    withdrawn_wei: int = 0
    escrowed_wei: int = 0  # sent with bids
    outbid_wei: int = 0  # bid escrow returned as credit on an outbid
    refund_wei: int = 0  # connection escrow returned after a close


@dataclass
class StepFigures:
    """The whole neighbourhood in one timestep."""

    surplus_wh: int = 0  # what the homes could sell
    demand_wh: int = 0  # what the homes imported
    offered_wh: int = 0
    traded_wh: int = 0  # delivered over connections during this timestep
    paid_wei: int = 0  # paid for the traded energy
    prices: list[tuple[int, int]] = field(default_factory=list)  # (price, cap Wh) of its connections


class Ledger:
    def __init__(
        self,
        names: Sequence[str],
        homes: Sequence[ChecksumAddress],
        meters: Sequence[str],
        steps: int,
        symbol: str = "ETH",
    ):
        self.names = list(names)
        self.symbol = symbol
        self._home_of: dict[str, int] = {address: i for i, address in enumerate(homes)}
        self._meter_home: dict[str, int] = {meter: i for i, meter in enumerate(meters)}
        self.offers: dict[int, Offer] = {}
        self.connections: dict[int, Connection] = {}
        self.books = [HomeBook() for _ in homes]
        self.figures = [StepFigures() for _ in range(steps)]
        self.readings_settled = 0
        self.readings_skipped = 0
        self.step = 0
        self._delivered_total = 0
        self._paid_total = 0

    # ------------------------------------------------------------------ events

    def apply(self, logs: Iterable[MarketLog]) -> list[str]:
        """Apply events in chain order; returns one line per event worth telling."""
        lines: list[str] = []
        for log in logs:
            line = getattr(self, "_on_" + log.name, _ignore)(log.args)
            if line:
                lines.append(line)
        return lines

    def _on_OfferCreated(self, args: dict[str, object]) -> str:
        offer = Offer(
            id=_int(args["id"]),
            seller=self._home_of[str(args["seller"])],
            energy_wh=_int(args["energyWh"]),
            start_price=_int(args["startPricePerKWh"]),
            bidding_ends=_int(args["biddingEnds"]),
            step=self.step,
        )
        self.offers[offer.id] = offer
        return (
            f"offer #{offer.id}: {self.names[offer.seller]} sells {offer.energy_wh} Wh "
            f"from {price_text(offer.start_price, self.symbol)}"
        )

    def _on_BidPlaced(self, args: dict[str, object]) -> str:
        offer = self.offers[_int(args["id"])]
        offer.price = _int(args["pricePerKWh"])
        offer.bidder = self._home_of[str(args["bidder"])]
        offer.bids += 1
        self.books[offer.bidder].escrowed_wei += _int(args["escrowWei"])
        return f"bid on #{offer.id}: {self.names[offer.bidder]} {price_text(offer.price, self.symbol)}"

    def _on_Outbid(self, args: dict[str, object]) -> str:
        offer = self.offers[_int(args["id"])]
        offer.outbids += 1
        loser = self._home_of[str(args["bidder"])]
        self.books[loser].outbid_wei += _int(args["refundWei"])
        refund = money_text(_int(args["refundWei"]), self.symbol)
        return f"outbid on #{offer.id}: {self.names[loser]} gets {refund} back as credit"

    def _on_OfferExpired(self, args: dict[str, object]) -> str:
        offer = self.offers[_int(args["id"])]
        offer.status = "expired"
        return f"offer #{offer.id} expired without a bid"

    def _on_ConnectionOpened(self, args: dict[str, object]) -> str:
        offer = self.offers[_int(args["id"])]
        offer.status = "awarded"
        conn = Connection(
            id=offer.id,
            seller=offer.seller,
            buyer=self._home_of[str(args["buyer"])],
            price=_int(args["pricePerKWh"]),
            cap_wh=_int(args["capWh"]),
            step=self.step,
        )
        self.connections[conn.id] = conn
        if conn.step < len(self.figures):
            self.figures[conn.step].prices.append((conn.price, conn.cap_wh))
        return (
            f"connection #{conn.id} opened: {self.names[conn.seller]} -> {self.names[conn.buyer]}, "
            f"{conn.cap_wh} Wh at {price_text(conn.price, self.symbol)}"
        )

    def _on_ReadingsAccepted(self, args: dict[str, object]) -> str:
        packed = args["readings"]
        assert isinstance(packed, list | tuple)
        self.readings_settled += len(packed)
        meters = [unpack(int(word))[0] for word in packed]
        homes = sorted(self.names[self._meter_home[m]] for m in meters if m in self._meter_home)
        return f"oracle settled {len(packed)} signed readings ({', '.join(homes)})"

    def _on_ReadingSkipped(self, args: dict[str, object]) -> str:
        self.readings_skipped += 1
        return f"oracle: reading of meter {args['meter']} skipped (reason {args['reason']})"

    def _on_ConnectionClosed(self, args: dict[str, object]) -> str:
        conn = self.connections[_int(args["id"])]
        conn.status = Status.CLOSED
        conn.closed_at = _int(args["closedAt"])
        conn.closed_step = self.step
        return f"connection #{conn.id} closed by {self.names[conn.buyer]} after {conn.delivered_wh} Wh"

    def _on_ConnectionEnded(self, args: dict[str, object]) -> str:
        conn = self.connections[_int(args["id"])]
        conn.delivered_wh = _int(args["deliveredWh"])
        conn.paid_wei = _int(args["paidWei"])
        conn.refund_wei = _int(args["refundWei"])
        conn.status = Status.COMPLETED if args["completed"] else Status.RELEASED
        conn.ended_step = self.step
        self.books[conn.buyer].refund_wei += conn.refund_wei
        how = "completed" if args["completed"] else "released"
        return (
            f"connection #{conn.id} {how}: {conn.delivered_wh} Wh for {money_text(conn.paid_wei, self.symbol)}, "
            f"{money_text(conn.refund_wei, self.symbol)} back to {self.names[conn.buyer]}"
        )

    def _on_Withdrawn(self, args: dict[str, object]) -> str:
        home = self._home_of.get(str(args["account"]))
        if home is None:
            return ""
        self.books[home].withdrawn_wei += _int(args["amountWei"])
        return f"{self.names[home]} withdrew {money_text(_int(args['amountWei']), self.symbol)}"

    # ------------------------------------------------------------------ delivery

    def open_connections(self) -> list[int]:
        return [c.id for c in self.connections.values() if c.open]

    def update(self, states: dict[int, ConnectionState], energy_step: int) -> None:
        """Take delivery and payment from the chain's views; new energy was drawn in `energy_step`."""
        for state in states.values():
            conn = self.connections[state.id]
            if conn.open:
                conn.delivered_wh = state.delivered_wh
                conn.paid_wei = state.paid_wei
        for conn in self.connections.values():
            new_wh = conn.delivered_wh - conn.accounted_wh
            if new_wh and 0 <= energy_step < len(self.figures):
                conn.deliveries[energy_step] = conn.deliveries.get(energy_step, 0) + new_wh
                conn.accounted_wh = conn.delivered_wh
        delivered = sum(c.delivered_wh for c in self.connections.values())
        paid = sum(c.paid_wei for c in self.connections.values())
        if 0 <= energy_step < len(self.figures):
            self.figures[energy_step].traded_wh += delivered - self._delivered_total
            self.figures[energy_step].paid_wei += paid - self._paid_total
        self._delivered_total, self._paid_total = delivered, paid

    def settle_books(self) -> None:
        """Per-home energy and money, from the connections."""
        for book in self.books:
            book.sold_wh = book.bought_wh = book.earned_wei = book.paid_wei = 0
        for conn in self.connections.values():
            self.books[conn.seller].sold_wh += conn.delivered_wh
            self.books[conn.seller].earned_wei += conn.paid_wei
            self.books[conn.buyer].bought_wh += conn.delivered_wh
            self.books[conn.buyer].paid_wei += conn.paid_wei

    @property
    def energy_traded_wh(self) -> int:
        return sum(c.delivered_wh for c in self.connections.values())

    @property
    def payments_wei(self) -> int:
        return sum(c.paid_wei for c in self.connections.values())

    @property
    def outbids(self) -> int:
        return sum(o.outbids for o in self.offers.values())


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _ignore(_args: dict[str, object]) -> str:
    return ""
