"""A plain-Python model of the market rules in DESIGN.md and the contract's NatSpec.

The stateful test drives the model and the deployed contract with the same actions and compares
them after every step. Each action either raises `Revert` (with the custom error the contract must
revert with) before touching any state, or applies its effects and appends the events the contract
must emit, in order, to `events` (which the test empties once it has compared them). Times are
block timestamps: `time` is the timestamp of the next block, the one the next transaction is mined
in; `block_time` is that of the last mined block, the one the views read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

TIMESTEP = 900
MIN_BID_INCREMENT = 10**9
MAX_CLOCK_SKEW = 300
MAX_BIDDING_SECONDS = 30 * 24 * 3600
MAX_OFFER_WH = 2**24 - 1
MAX_READING_WH = (2**48 - 1) - (2**32 - 1)
MAX_METER_CONNECTIONS = 8
IDLE_TIMESTEPS = 96
IDLE_SECONDS = IDLE_TIMESTEPS * TIMESTEP
UINT72_MAX = 2**72 - 1
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

type Event = tuple[str, tuple[object, ...]]  # name and arguments, in the order the ABI lists them


class Status(IntEnum):
    BIDDING = 0
    CANCELLED = 1
    EXPIRED = 2
    ACTIVE = 3
    CLOSED = 4
    COMPLETED = 5
    RELEASED = 6


class Skip(IntEnum):
    NONE = 0
    FUTURE_TIMESTAMP = 1
    BAD_SIGNATURE = 2
    UNKNOWN_METER = 3
    NOT_NEWER = 4
    OUT_OF_RANGE = 5
    MALFORMED = 6


class AwardRefusal(IntEnum):
    METER_NOT_OWNED = 0
    METER_QUEUE_FULL = 1


class Revert(Exception):
    """The contract must revert with custom error `name(*args)`."""

    def __init__(self, name: str, *args: object) -> None:
        super().__init__(f"{name}{args}")
        self.name = name
        self.error_args = args


def escrow_wei(price: int, energy_wh: int) -> int:
    """What a bid locks: price x energy / 1000, rounded up."""
    return -(-price * energy_wh // 1000)


def pay_wei(price: int, delivered_wh: int) -> int:
    """What the seller earns for delivered energy: price x delivered / 1000, rounded down."""
    return price * delivered_wh // 1000


@dataclass
class Record:
    """An offer, and the connection it becomes once awarded."""

    id: int
    seller: str
    energy_wh: int
    start_price: int
    bidding_ends: int
    status: Status = Status.BIDDING
    price: int = 0
    buyer: str = ZERO_ADDRESS
    meter: str = ZERO_ADDRESS
    awarded_at: int = 0
    closed_at: int = 0
    baseline_wh: int = 0
    start_wh: int = 0  # the meter reading from which energy counts; set when it heads its meter's queue
    delivered_wh: int = 0  # final, once Completed or Released
    claimed_wh: int = 0

    @property
    def open(self) -> bool:
        return self.status in (Status.ACTIVE, Status.CLOSED)

    @property
    def idle_at(self) -> int:
        """After this time its seller may close it, if nothing was delivered on it."""
        return self.awarded_at + IDLE_SECONDS


@dataclass
class Meter:
    address: str
    meter_id: int
    owner: str = ZERO_ADDRESS
    registered: bool = False
    last_wh: int = 0
    last_ts: int = 0
    queue: list[int] = field(default_factory=list)  # open connections, oldest first; [0] is filling


@dataclass(frozen=True)
class Reading:
    meter: str
    cumulative_wh: int
    timestamp: int
    signed_by_meter: bool  # a valid, low-s signature by the meter named, for this market's domain
    stray_bits: int = 0  # bits 88..95 of the packed word, which the signature does not cover

    @property
    def word(self) -> int:
        """The packed reading as `settle` takes it: meter << 96 | cumulativeWh << 40 | timestamp."""
        return int(self.meter, 16) << 96 | self.stray_bits << 88 | self.cumulative_wh << 40 | self.timestamp


class MarketModel:
    def __init__(self, registrar: str, time: int, *, token: bool = False) -> None:
        self.registrar = registrar
        self.token = token  # a token market: bids send no value, the escrow is pulled with transferFrom
        self.time = time
        self.block_time = time - 1
        self.records: dict[int, Record] = {}
        self.meters: dict[str, Meter] = {}
        self.credit: dict[str, int] = {}
        self.bid_escrow: dict[str, int] = {}
        self.open_ids: dict[str, list[int]] = {}  # per account, newest first (the contract's list)
        self.balance = 0  # wei the contract holds: bids in, withdrawals out
        self.events: list[Event] = []  # what the last action emitted
        self.notes: list[str] = []  # which paths the actions took, for the test's statistics

    # ------------------------------------------------------------------ helpers

    def mined(self) -> None:
        """A transaction was mined in the block at `time`; the next block is one second later."""
        self.block_time = self.time
        self.time += 1

    def emit(self, name: str, *args: object) -> None:
        self.events.append((name, args))

    def existing(self, offer_id: int) -> Record:
        rec = self.records.get(offer_id)
        if rec is None:
            raise Revert("UnknownOffer", offer_id)
        return rec

    def min_next_bid(self, rec: Record) -> int:
        return rec.start_price if rec.buyer == ZERO_ADDRESS else rec.price + MIN_BID_INCREMENT

    def _add(self, key: str, account: str, amount: int) -> None:
        table = self.credit if key == "credit" else self.bid_escrow
        table[account] = table.get(account, 0) + amount
        assert table[account] >= 0

    def _link(self, account: str, offer_id: int) -> None:
        self.open_ids.setdefault(account, []).insert(0, offer_id)

    def _unlink(self, account: str, offer_id: int) -> None:
        self.open_ids[account].remove(offer_id)

    def delivered_now(self, rec: Record) -> int:
        """Energy billed to the connection up to its meter's last accepted reading."""
        if rec.status in (Status.COMPLETED, Status.RELEASED):
            return rec.delivered_wh
        if not rec.open:
            return 0
        meter = self.meters[rec.meter]
        if meter.queue[0] != rec.id:
            return 0
        return min(max(meter.last_wh - rec.start_wh, 0), rec.energy_wh)

    def unclaimed(self, rec: Record) -> int:
        """Payment for energy delivered on an open connection that is not its seller's credit yet."""
        return pay_wei(rec.price, self.delivered_now(rec)) - pay_wei(rec.price, rec.claimed_wh) if rec.open else 0

    def escrow_left(self, rec: Record) -> int:
        """What is left of the buyer's escrow in an open connection."""
        return escrow_wei(rec.price, rec.energy_wh) - pay_wei(rec.price, self.delivered_now(rec))

    def filling(self, meter: Meter) -> int:
        return meter.queue[0] if meter.queue else 0

    def meter_owner(self, meter: str) -> str:
        known = self.meters.get(meter)
        return known.owner if known else ZERO_ADDRESS

    # ------------------------------------------------------------------ registrar

    def register_meter(self, sender: str, meter: str, owner: str) -> None:
        if sender != self.registrar:
            raise Revert("NotRegistrar", sender)
        known = self.meters.get(meter)
        if known is not None and known.registered:
            raise Revert("MeterAlreadyRegistered", meter)
        if known is not None and known.queue:
            # A new owner's consumption must never be billed to the previous owner's connections.
            raise Revert("MeterHasConnections", meter)
        if known is None:
            known = self.meters[meter] = Meter(meter, meter_id=len(self.meters) + 1)
        elif known.last_ts:
            self.notes.append("revoked meter registered again")
        known.owner = owner
        known.registered = True
        self.emit("MeterRegistered", meter, owner, known.meter_id)

    def revoke_meter(self, sender: str, meter: str) -> None:
        if sender != self.registrar:
            raise Revert("NotRegistrar", sender)
        known = self.meters.get(meter)
        if known is None or not known.registered:
            raise Revert("MeterNotRegistered", meter)
        known.registered = False
        known.owner = ZERO_ADDRESS
        self.emit("MeterRevoked", meter)

    # ------------------------------------------------------------------ offers

    def create_offer(self, sender: str, energy_wh: int, start_price: int, bidding_seconds: int) -> int:
        if energy_wh == 0 or energy_wh > MAX_OFFER_WH:
            raise Revert("InvalidEnergy", energy_wh)
        if start_price == 0 or start_price > UINT72_MAX:
            raise Revert("InvalidPrice", start_price)
        if bidding_seconds == 0 or bidding_seconds > MAX_BIDDING_SECONDS:
            raise Revert("InvalidBiddingTime", bidding_seconds, MAX_BIDDING_SECONDS)
        offer_id = len(self.records) + 1
        ends = self.time + bidding_seconds
        self.records[offer_id] = Record(offer_id, sender, energy_wh, start_price, ends)
        self._link(sender, offer_id)
        self.emit("OfferCreated", offer_id, sender, energy_wh, start_price, ends)
        return offer_id

    def cancel_offer(self, sender: str, offer_id: int) -> None:
        rec = self.existing(offer_id)
        if rec.seller != sender:
            raise Revert("NotSeller", offer_id)
        if rec.status != Status.BIDDING:
            raise Revert("WrongStatus", offer_id, rec.status)
        if rec.buyer != ZERO_ADDRESS:
            raise Revert("OfferHasBids", offer_id)
        rec.status = Status.CANCELLED
        self._unlink(sender, offer_id)
        self.emit("OfferCancelled", offer_id)

    def bid(self, sender: str, offer_id: int, price: int, meter: str, value: int) -> None:
        rec = self.existing(offer_id)
        if rec.status != Status.BIDDING:
            raise Revert("WrongStatus", offer_id, rec.status)
        if self.time >= rec.bidding_ends:
            raise Revert("BiddingOver", offer_id, rec.bidding_ends)
        if rec.seller == sender:
            raise Revert("SelfTrade")
        min_price = self.min_next_bid(rec)
        if price < min_price:
            raise Revert("BidTooLow", min_price)
        if price > UINT72_MAX:
            raise Revert("InvalidPrice", price)
        required = escrow_wei(price, rec.energy_wh)
        expected_value = 0 if self.token else required
        if value != expected_value:
            raise Revert("WrongEscrow", expected_value, value)
        owner = self.meter_owner(meter)
        if owner != sender:
            raise Revert("NotMeterOwner", meter, owner)
        if self.meters[meter].last_ts == 0:
            raise Revert("MeterNeverReported", meter)
        if len(self.meters[meter].queue) >= MAX_METER_CONNECTIONS:
            raise Revert("MeterQueueFull", meter, MAX_METER_CONNECTIONS)
        if rec.buyer != ZERO_ADDRESS:
            self.notes.append("outbid")
            refund = escrow_wei(rec.price, rec.energy_wh)
            self._add("escrow", rec.buyer, -refund)
            self._add("credit", rec.buyer, refund)
            self.emit("Outbid", offer_id, rec.buyer, refund)
        rec.price, rec.buyer, rec.meter = price, sender, meter
        self._add("escrow", sender, required)
        self.balance += required
        self.emit("BidPlaced", offer_id, sender, meter, price, required)

    def finalize(self, offer_id: int) -> None:
        rec = self.existing(offer_id)
        if rec.status != Status.BIDDING:
            raise Revert("WrongStatus", offer_id, rec.status)
        if self.time < rec.bidding_ends:
            raise Revert("BiddingNotOver", offer_id, rec.bidding_ends)
        if rec.buyer == ZERO_ADDRESS:
            self.notes.append("offer expired")
            rec.status = Status.EXPIRED
            self._unlink(rec.seller, offer_id)
            self.emit("OfferExpired", offer_id)
            return
        meter = self.meters[rec.meter]
        escrow = escrow_wei(rec.price, rec.energy_wh)
        self._add("escrow", rec.buyer, -escrow)
        refusal = (
            AwardRefusal.METER_NOT_OWNED
            if meter.owner != rec.buyer
            else AwardRefusal.METER_QUEUE_FULL
            if len(meter.queue) >= MAX_METER_CONNECTIONS
            else None
        )
        if refusal is not None:
            # Never bill one owner's consumption to another's escrow, nor queue past the bound.
            self.notes.append(f"award refused: {refusal.name}")
            self._add("credit", rec.buyer, escrow)
            rec.status = Status.EXPIRED
            self._unlink(rec.seller, offer_id)
            self.emit("AwardRefused", offer_id, rec.buyer, rec.meter, escrow, refusal)
            self.emit("OfferExpired", offer_id)
            return
        rec.status = Status.ACTIVE
        rec.awarded_at = self.time
        self._link(rec.buyer, offer_id)
        # The baseline is the meter's last reading at or before the award (a later-relayed reading
        # taken before the award moves it up, see _apply_reading): earlier energy is never billed.
        rec.baseline_wh = meter.last_wh
        if not meter.queue:
            rec.start_wh = rec.baseline_wh
        else:
            self.notes.append("connection queued behind another")
        meter.queue.append(offer_id)
        if len(meter.queue) == MAX_METER_CONNECTIONS:
            self.notes.append("meter queue filled to its cap")
        self.emit(
            "ConnectionOpened", offer_id, rec.seller, rec.buyer, rec.meter, rec.price, rec.energy_wh, meter.last_wh
        )

    # ------------------------------------------------------------------ delivery

    def apply_reading(self, reading: Reading) -> Skip:
        """One reading of a `settle` batch, in the block at `time` (a later reading of a meter builds
        on the earlier ones); a skipped one is logged where it is skipped."""
        outcome = self._apply_reading(reading)
        if outcome != Skip.NONE:
            self.emit("ReadingSkipped", reading.meter, reading.cumulative_wh, reading.timestamp, outcome)
        return outcome

    def settled(self, accepted: list[Reading]) -> None:
        """The end of a `settle` batch: the accepted readings are logged together."""
        if accepted:
            self.emit("ReadingsAccepted", tuple(r.word for r in accepted))

    def _apply_reading(self, reading: Reading) -> Skip:
        if reading.timestamp > self.time + MAX_CLOCK_SKEW:
            return Skip.FUTURE_TIMESTAMP
        if reading.cumulative_wh > MAX_READING_WH:
            return Skip.OUT_OF_RANGE
        if reading.stray_bits:
            return Skip.MALFORMED
        if not reading.signed_by_meter:
            return Skip.BAD_SIGNATURE
        meter = self.meters.get(reading.meter)
        if meter is None or not meter.registered:
            return Skip.UNKNOWN_METER
        if reading.timestamp <= meter.last_ts or reading.cumulative_wh < meter.last_wh:
            return Skip.NOT_NEWER
        while meter.queue:
            head = self.records[meter.queue[0]]
            if head.status == Status.CLOSED and (
                reading.timestamp > head.closed_at or self.time > head.closed_at + TIMESTEP
            ):
                # Drawn after the close, or relayed after the grace window: bill up to the last reading.
                late = self.time > head.closed_at + TIMESTEP
                self.notes.append("reading after the grace window" if late else "reading after the close")
                self._end_head(meter, completed=False)
            elif reading.timestamp <= head.awarded_at:
                # Taken at or before the award, relayed late: it is the connection's baseline.
                self.notes.append("reading taken before the award")
                head.start_wh = max(head.start_wh, reading.cumulative_wh)
                break
            elif reading.cumulative_wh >= head.start_wh + head.energy_wh:
                self._end_head(meter, completed=True)
            else:
                break
        meter.last_wh, meter.last_ts = reading.cumulative_wh, reading.timestamp
        return Skip.NONE

    def _end_head(self, meter: Meter, *, completed: bool) -> None:
        """End the connection the meter is filling: at its cap, or (released) at the last reading."""
        head = self.records[meter.queue[0]]
        delivered = head.energy_wh if completed else self.delivered_now(head)
        meter.queue.pop(0)
        self._end(head, delivered, Status.COMPLETED if completed else Status.RELEASED)
        if meter.queue:
            nxt = self.records[meter.queue[0]]
            nxt.start_wh = max(nxt.baseline_wh, head.start_wh + delivered)
            self.notes.append("queued connection starts filling")

    def _end(self, rec: Record, delivered: int, status: Status) -> None:
        paid = pay_wei(rec.price, delivered)
        seller_share = paid - pay_wei(rec.price, rec.claimed_wh)
        refund = escrow_wei(rec.price, rec.energy_wh) - paid
        self._add("credit", rec.seller, seller_share)
        self._add("credit", rec.buyer, refund)
        rec.status, rec.delivered_wh, rec.claimed_wh = status, delivered, delivered
        part = "nothing" if delivered == 0 else "all" if delivered == rec.energy_wh else "part"
        self.notes.append(f"{status.name} with {part} delivered")
        self._unlink(rec.seller, rec.id)
        self._unlink(rec.buyer, rec.id)
        if seller_share:
            self.emit("PaymentClaimed", rec.id, rec.seller, delivered, seller_share)
        self.emit("ConnectionEnded", rec.id, delivered, paid, refund, status == Status.COMPLETED)

    def close_connection(self, sender: str, offer_id: int) -> None:
        rec = self.existing(offer_id)
        if rec.status < Status.ACTIVE or sender not in (rec.buyer, rec.seller):
            raise Revert("NotBuyer", offer_id)
        if rec.status != Status.ACTIVE:
            raise Revert("WrongStatus", offer_id, rec.status)
        if sender != rec.buyer:
            # Its seller, once the connection has sat idle: awarded long ago, nothing delivered.
            if self.time <= rec.idle_at or self.delivered_now(rec):
                raise Revert("ConnectionNotIdle", offer_id, rec.idle_at)
            queued = self.meters[rec.meter].queue[0] != offer_id
            self.notes.append(f"seller closed an idle connection{' (queued)' if queued else ''}")
        rec.status = Status.CLOSED
        rec.closed_at = self.time
        self.emit("ConnectionClosed", offer_id, rec.buyer, self.time)

    def release(self, offer_id: int) -> None:
        rec = self.existing(offer_id)
        if rec.status != Status.CLOSED:
            raise Revert("WrongStatus", offer_id, rec.status)
        if self.time <= rec.closed_at + TIMESTEP:
            raise Revert("GraceNotOver", offer_id, rec.closed_at + TIMESTEP)
        meter = self.meters[rec.meter]
        self.notes.append(
            "release of the filling connection" if meter.queue[0] == offer_id else "release of a queued one"
        )
        if meter.queue[0] == offer_id:
            self._end_head(meter, completed=False)
        else:  # still queued behind another connection: it never received energy
            meter.queue.remove(offer_id)
            self._end(rec, 0, Status.RELEASED)

    def claim(self, offer_id: int) -> None:
        rec = self.existing(offer_id)
        if not rec.open:
            raise Revert("WrongStatus", offer_id, rec.status)
        self._claim(rec)

    def _claim(self, rec: Record) -> None:
        amount = self.unclaimed(rec)
        if amount:
            self.notes.append("payment claimed")
            rec.claimed_wh = self.delivered_now(rec)
            self._add("credit", rec.seller, amount)
            self.emit("PaymentClaimed", rec.id, rec.seller, rec.claimed_wh, amount)

    # ------------------------------------------------------------------ withdrawal

    def withdraw(self, sender: str) -> int:
        """Pays the stored credit only: payment still unclaimed on open connections stays there."""
        if self.credit.get(sender, 0) == 0:
            raise Revert("NothingToWithdraw")
        if any(
            self.unclaimed(r) for r in map(self.records.get, self.open_ids.get(sender, [])) if r and r.seller == sender
        ):
            self.notes.append("withdraw left a payment unclaimed")
        return self._pay_out(sender)

    def claim_and_withdraw(self, sender: str, ids: list[int]) -> int:
        """Claims `ids` (passing over those that are not open connections, whoever sells them), then
        pays out the sender's credit; all or nothing."""
        claimable = {i for i in ids if i in self.records and self.records[i].seller == sender}
        if self.credit.get(sender, 0) + sum(self.unclaimed(self.records[i]) for i in claimable) == 0:
            raise Revert("NothingToWithdraw")
        for offer_id in ids:
            rec = self.records.get(offer_id)
            if rec is not None and rec.open:
                self._claim(rec)
        return self._pay_out(sender)

    def _pay_out(self, sender: str) -> int:
        amount = self.credit[sender]
        self.credit[sender] = 0
        self.balance -= amount
        self.emit("Withdrawn", sender, amount)
        return amount
