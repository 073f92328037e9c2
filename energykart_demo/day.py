"""The trading day: every timestep moves chain time 15 minutes, and every step in it is a transaction.

One timestep k, at chain time T_k = T_0 + k x 15 min:
  1. the meters sign their cumulative import at T_k and post it to the oracle over HTTP;
  2. the oracle settles the readings (one batch transaction), paying sellers from buyers' escrow;
  3. a minute later the offers of the previous timestep stop taking bids: the oracle's keeper
     finalizes them, opening connections whose baseline is the reading at T_k;
  4. every home's autopilot decides (traders.py): buyers close connections whose session is over;
     sellers offer the surplus of the timesteps to come one at a time, each offer followed by the
     buyers' bids for their need.
After the last timestep, buyers close what is still open; once the grace window has passed the
keeper releases it and every home's autopilot withdraws its credit when that is worth the fee. The
conservation of money is checked after each timestep and at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from eth_typing import ChecksumAddress

from energykart_demo.devnet import Devnet
from energykart_demo.economics import Economics
from energykart_demo.homes import STEP_SECONDS, HomeDay, StepProfile, clock
from energykart_demo.ledger import Ledger
from energykart_demo.live import View
from energykart_demo.market import GasUse, Market
from energykart_demo.oracle_process import OracleClient
from energykart_demo.strategy import autopilot
from energykart_demo.traders import BID_ROUNDS, OFFER_ROUNDS, SESSION_HOURS, Action, Decision, Traders
from oracle.chain import Status
from oracle.meter import Meter
from oracle.readings import Domain

AWARD_DELAY = 60  # seconds after the readings of a timestep at which its auctions end
WIND_DOWN_STEPS = 2  # one to close the last connections, one for the grace window to pass
EXTRA_RELEASE_ROUNDS = 3


class DemoError(RuntimeError):
    """The day could not be played (the oracle did not settle, a transaction failed, ...)."""


@dataclass(frozen=True, slots=True)
class ConservationCheck:
    step: int
    contract_wei: int
    held_wei: int  # escrow plus credit (with unclaimed payment) over all homes

    @property
    def ok(self) -> bool:
        return self.contract_wei == self.held_wei


@dataclass(frozen=True, slots=True)
class BalanceCheck:
    """A home's wallet over the day: it must change by exactly its payments, less its gas fees."""

    home: int
    start_wei: int
    end_wei: int
    fees_wei: int
    earned_wei: int
    paid_wei: int
    credit_left_wei: int  # credit the autopilot left in the market: too small to be worth a withdrawal

    @property
    def ok(self) -> bool:
        return self.end_wei - self.start_wei + self.fees_wei + self.credit_left_wei == self.earned_wei - self.paid_wei


@dataclass
class DayOutcome:
    ledger: Ledger
    gas: list[GasUse]
    traders: Traders
    conservation: list[ConservationCheck] = field(default_factory=list)
    balances: list[BalanceCheck] = field(default_factory=list)

    @property
    def conservation_ok(self) -> bool:
        return all(c.ok for c in self.conservation) and all(b.ok for b in self.balances)


class TradingDay:
    def __init__(
        self,
        devnet: Devnet,
        days: Sequence[HomeDay],
        steps: int,
        seed: int,
        session: aiohttp.ClientSession,
        oracle_url: str,
        view: View,
        economics: Economics,
        settings: autopilot.Settings,
        session_hours: Sequence[int] = SESSION_HOURS,
        pace: float = 0.0,
    ) -> None:
        self.session_hours = session_hours
        self.devnet = devnet
        self.economics = economics
        self.settings = settings
        self.pace = pace
        self.days = list(days)
        self.steps = steps
        self.session = session
        self.oracle_url = oracle_url
        self.view = view
        self.market = Market(session, devnet.rpc_url, devnet.market, devnet.currency, devnet.home_keys)
        self.oracle = OracleClient(session, oracle_url)
        names = [d.spec.name for d in days]
        self.meter_addresses = [m.address for m in devnet.meters]
        self.ledger = Ledger(names, devnet.homes, self.meter_addresses, steps, devnet.symbol)
        self.seed = seed
        self._next_block = devnet.deploy_block
        self._chain_time = 0
        self._meters: list[Meter] = []

    # ------------------------------------------------------------------ the day

    async def play(self) -> DayOutcome:
        increment = int(await self.market.contract.functions.minBidIncrement().call())
        traders = Traders(
            self.days, self.steps, increment, self.economics, self.settings, self.seed, self.session_hours
        )
        start = await self.market.now() + AWARD_DELAY
        domain = Domain(self.devnet.chain_id, self.devnet.market)
        self._meters = [
            Meter(key, domain, StepProfile(start, day.import_wh), start_wh=day.spec.start_wh, clock=self._clock)
            for key, day in zip(self.devnet.meters, self.days, strict=True)
        ]
        homes = self.devnet.homes
        wallets = await asyncio.gather(*(self.market.balance(h) for h in homes))
        outcome = DayOutcome(self.ledger, gas=[], traders=traders)
        for k, day_figures in enumerate(self.ledger.figures):
            day_figures.surplus_wh = sum(d.surplus_wh[k] for d in self.days)
            day_figures.demand_wh = sum(d.import_wh[k] for d in self.days)

        total = self.steps + WIND_DOWN_STEPS
        self.view.begin(total, self.ledger)
        try:
            loop = asyncio.get_running_loop()
            for k in range(total):
                began = loop.time()
                await self._timestep(k, start, traders)
                outcome.conservation.append(await self._conservation(k))
                await asyncio.sleep(max(0.0, self.pace - (loop.time() - began)))  # time to watch it
            await self._release_rest(start + total * STEP_SECONDS)
            credit_left = await self._withdraw_all(traders, total)
            outcome.conservation.append(await self._conservation(total))
            self.view.step(total, "day over")
        finally:
            self.view.end()

        head = await self.market.head()
        outcome.gas = await self.market.gas_uses(self.devnet.deploy_block, head)
        self.ledger.settle_books()
        end_wallets = await asyncio.gather(*(self.market.balance(h) for h in homes))
        for i, home in enumerate(homes):
            book = self.ledger.books[i]
            # Gas is paid in the native coin: it shows in the wallet only when that is the currency.
            fees = sum(g.fee_wei for g in outcome.gas if g.sender == home) if self.market.token is None else 0
            outcome.balances.append(
                BalanceCheck(i, wallets[i], end_wallets[i], fees, book.earned_wei, book.paid_wei, credit_left[home])
            )
        return outcome

    async def _timestep(self, k: int, start: int, traders: Traders) -> None:
        label = f"timestep {k + 1}/{self.steps} {clock(k, self.steps)}" if k < self.steps else "closing the day"
        self.view.step(k, label)
        self.ledger.step = k
        closing = k >= self.steps
        await self._meter_step(start + k * STEP_SECONDS, energy_step=k - 1)
        await self._award_step(start + k * STEP_SECONDS, closing=closing)
        if closing:
            await self._close([c.id for c in self.ledger.connections.values() if c.status is Status.ACTIVE])
        else:
            await self._trade(k, traders, bidding_ends=start + (k + 1) * STEP_SECONDS + AWARD_DELAY)

    def _clock(self) -> float:
        return float(self._chain_time)

    async def _sync(self) -> None:
        """Read the market's new events into the ledger and show them."""
        head = await self.market.head()
        if head < self._next_block:
            return
        logs = await self.market.events(self._next_block, head)
        self._next_block = head + 1
        self.view.lines(self.ledger.apply(logs))

    # ------------------------------------------------------------------ one timestep

    async def _meter_step(self, at: int, energy_step: int) -> None:
        """Move chain time to `at`; every meter reads and posts; the oracle settles."""
        await self.market.mine_at(at)
        self._chain_time = at
        await self.oracle.tick()  # the oracle learns the new chain time before the readings come
        for meter in self._meters:
            meter.take_reading()
        delivered = await asyncio.gather(*(m.deliver(self.session, self.oracle_url) for m in self._meters))
        if not all(delivered):
            raise DemoError(f"the oracle at {self.oracle_url} did not take the readings")
        await self.oracle.tick()
        settled = await self.market.meter_timestamps(self.meter_addresses)
        late = [m for m, ts in settled.items() if ts != at]
        if late:
            raise DemoError(f"the oracle did not settle the readings of {len(late)} meters at {at}")
        await self._sync()
        states = await self.market.connections(self.ledger.open_connections())
        self.ledger.update(states, energy_step)

    async def _award_step(self, readings_at: int, *, closing: bool) -> None:
        """Let the auctions end (and, closing the day, the grace windows pass); the keeper acts.

        Chain time always moves on to a minute after the readings, so the offers made next end a
        minute after the next timestep's readings: those readings are their connections' baseline.
        """
        due = [o.bidding_ends for o in self.ledger.offers.values() if o.status == "bidding"]
        if closing:
            due += [
                c.closed_at + STEP_SECONDS + 1 for c in self.ledger.connections.values() if c.status is Status.CLOSED
            ]
        at = max([readings_at + AWARD_DELAY, *due])
        if at > await self.market.now():
            await self.market.mine_at(at)
        await self.oracle.tick()
        await self._sync()
        waiting = [o.id for o in self.ledger.offers.values() if o.status == "bidding" and o.bidding_ends <= at]
        if waiting:
            raise DemoError(f"the oracle's keeper did not finalize offers {waiting}")

    async def _close(self, connection_ids: list[int]) -> None:
        for connection_id in connection_ids:
            buyer = self.devnet.homes[self.ledger.connections[connection_id].buyer]
            await self.market.close(buyer, connection_id)
        await self._sync()

    async def _trade(self, k: int, traders: Traders, bidding_ends: int) -> None:
        """The autopilots trade: buyers close what has served its session; sellers offer one at a
        time, each offer followed by the buyers' bids, until no seller offers; last, as bidding
        closes, a buyer with nothing for the session may outbid."""
        for home in range(len(self.days)):
            for decision in traders.decide(home, k, self.ledger):
                if decision.action is Action.CLOSE:
                    assert decision.connection_id is not None
                    await self.market.close(self.devnet.homes[home], decision.connection_id)
                    self._carried_out(traders, home, k, decision)
        await self._sync()
        reasons: dict[int, str] = {}
        await self._bid_rounds(k, traders, reasons)
        for _round in range(OFFER_ROUNDS):
            offered = False
            for home in traders.bidding_order():
                decisions = traders.decide(home, k, self.ledger)
                offer = next((d for d in decisions if d.action is Action.OFFER), None)
                if offer is None:
                    continue
                seconds = bidding_ends - await self.market.now()
                await self.market.create_offer(self.devnet.homes[home], offer.energy_wh, offer.price, seconds)
                self.ledger.figures[k + 1].offered_wh += offer.energy_wh
                self._carried_out(traders, home, k, offer)
                await self._sync()
                await self._bid_rounds(k, traders, reasons)
                offered = True
            if not offered:
                break
        await self._bid_rounds(k, traders, reasons, bidding_closes=True)
        for home, reason in sorted(reasons.items()):
            if reason:
                traders.record(home, k, Decision(Action.NOTHING, reason))

    async def _bid_rounds(
        self, k: int, traders: Traders, reasons: dict[int, str], *, bidding_closes: bool = False
    ) -> None:
        """Rounds in a random order, one bid per home and round, until nobody bids."""
        for _round in range(BID_ROUNDS):
            placed = False
            for home in traders.bidding_order():
                decisions = traders.decide(home, k, self.ledger, bidding_closes=bidding_closes)
                bid = next((d for d in decisions if d.action is Action.BID), None)
                if bid is None:
                    reasons[home] = next((d.reason for d in decisions if d.action is Action.NOTHING), "")
                    continue
                assert bid.offer_id is not None
                meter = self.meter_addresses[home]
                await self.market.bid(self.devnet.homes[home], bid.offer_id, bid.price, bid.energy_wh, meter)
                self._carried_out(traders, home, k, bid)
                await self._sync()
                placed = True
            if not placed:
                return

    def _carried_out(self, traders: Traders, home: int, k: int, decision: Decision) -> None:
        traders.record(home, k, decision)
        self.view.lines([f"{self.ledger.names[home]} autopilot: {decision.action} - {decision.reason}"])

    # ------------------------------------------------------------------ the end of the day

    async def _release_rest(self, after: int) -> None:
        """Wait out the grace window of connections the keeper has not released yet."""
        for extra in range(EXTRA_RELEASE_ROUNDS):
            if not any(c.open for c in self.ledger.connections.values()):
                return
            await self._meter_step(after + extra * STEP_SECONDS, energy_step=-1)
            await self._award_step(after + extra * STEP_SECONDS, closing=True)
        still = [c.id for c in self.ledger.connections.values() if c.open]
        if still:
            raise DemoError(f"connections {still} were never released")

    async def _withdraw_all(self, traders: Traders, step: int) -> dict[ChecksumAddress, int]:
        """The daily withdrawal, as each home's autopilot decides it; returns the credit left behind."""
        holdings = await self.market.holdings(self.devnet.homes)
        left: dict[ChecksumAddress, int] = {}
        for i, home in enumerate(self.devnet.homes):
            escrow, credit, open_ids = holdings[home]
            if escrow:
                raise DemoError(f"{home} still has {escrow} wei in escrow at the end of the day")
            left[home] = credit
            if not credit:
                continue
            decisions = traders.decide(i, step, self.ledger, credit=credit, withdraw_due=True)
            if any(d.action is Action.WITHDRAW for d in decisions):
                await self.market.withdraw(home, open_ids)
                left[home] = 0
            for decision in decisions:
                if decision.action in (Action.WITHDRAW, Action.NOTHING):
                    self._carried_out(traders, i, step, decision)
        await self._sync()
        return left

    async def _conservation(self, step: int) -> ConservationCheck:
        holdings = await self.market.holdings(self.devnet.homes)
        held = sum(escrow + credit for escrow, credit, _ in holdings.values())
        return ConservationCheck(step, await self.market.balance(self.devnet.market), held)
