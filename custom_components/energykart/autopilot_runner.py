"""The "Autopilot" switch's runner: the autopilot's decisions from the market and the household, carried out.

On each coordinator update (and when turned on) it builds the autopilot's situation: the open
offers and the account's connections and credit from the coordinator, the household's surplus or
import and battery from its sensors (a persistence forecast: the power now, for up to four hours),
the tariffs and exchange rate from the options, and gas at the node's gas price. It carries out
each decision through the actions' own functions and fires `energykart_autopilot_decision` for
each one, and for a reason to do nothing only when that reason changes, so that the event bus
is not flooded on every poll. A failing transaction is logged and fired with its error; the rest
of the round waits for the next update.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import aiohttp
from homeassistant.const import UnitOfPower
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.util import dt as dt_util
from homeassistant.util.unit_conversion import PowerConverter
from web3.exceptions import Web3Exception

from . import autopilot
from .const import (
    CONF_BATTERY_SOC,
    CONF_GRID_EXPORT,
    CONF_HOUSE_CONSUMPTION,
    CONF_SOLAR_POWER,
    DOMAIN,
    LOGGER,
)
from .contract import Status
from .coordinator import EnergyKartCoordinator
from .services import async_bid, async_close_connection, async_sell, async_withdraw
from .tariffs import (
    CONF_BATTERY_CAPACITY,
    CONF_BATTERY_RESERVE,
    CONF_DAILY_BUDGET,
    CONF_MARGIN,
    CONF_MAX_OFFER_ENERGY,
    Money,
    entity_number,
    option,
    read_money,
)

EVENT_AUTOPILOT_DECISION: Final = "energykart_autopilot_decision"
# Fees paid by the autopilot's transactions, in Home Assistant's currency (Decimal), per config entry.
SIGNAL_FEE_PAID: Final = f"{DOMAIN}_fee_paid_{{}}"
TIMESTEP: Final = timedelta(minutes=15)  # the oracle's settlement timestep
HORIZON_STEPS: Final = 4  # timesteps ahead that an offer and a bid cover
# A trade too small for its fees over an hour may cover up to four: a household importing or
# exporting a few hundred watts trades for longer instead of not at all.
LONGEST_HORIZON_STEPS: Final = 16
BIDDING_MINUTES: Final = 15  # an offer's bidding ends with the timestep: the award starts the next one
_NUMBERS: Final = re.compile(r"\d+")
_TRANSPORT: Final = (Web3Exception, aiohttp.ClientError, TimeoutError, OSError)


def _power(hass: HomeAssistant, entity_id: str | None) -> Decimal | None:
    """A power entity's state in W; None while it has no number."""
    if not entity_id:
        return None
    value, unit = entity_number(hass, entity_id)
    if value is None:
        return None
    if unit in PowerConverter.VALID_UNITS and unit != UnitOfPower.WATT:
        return Decimal(str(PowerConverter.convert(float(value), unit, UnitOfPower.WATT)))
    return value


class AutopilotRunner:
    """Trades for one config entry while its switch is on."""

    def __init__(self, coordinator: EnergyKartCoordinator) -> None:
        self.coordinator = coordinator
        self.hass = coordinator.hass
        self.day: date = dt_util.now().date()
        self.spent_today = 0  # the market currency's smallest units, energy and fees
        self.withdrawn_on: date | None = None
        self._running = False
        self._first_seen: dict[int, datetime] = {}  # connections: when this runner first saw them
        self._my_offers: set[int] = set()  # offers it made that are still open
        self._bought_for: dict[int, int] = {}  # offers it made or bid on: the timesteps they cover
        self._unsold_at: datetime | None = None
        self._quiet_reason: str | None = None  # the reason to do nothing fired last, numbers masked

    def as_dict(self) -> dict[str, Any]:
        """What a restart keeps: the day's spending and the last withdrawal."""
        return {
            "day": self.day.isoformat(),
            "spent_today": str(self.spent_today),
            "withdrawn_on": self.withdrawn_on.isoformat() if self.withdrawn_on else None,
        }

    def restore(self, stored: Mapping[str, Any]) -> None:
        if stored.get("day") == self.day.isoformat():
            self.spent_today = int(stored.get("spent_today", 0))
        if withdrawn := stored.get("withdrawn_on"):
            self.withdrawn_on = date.fromisoformat(withdrawn)

    @callback
    def schedule(self) -> None:
        """Run a round in the background, unless one runs (its own transactions refresh the coordinator)."""
        if self._running or not self.coordinator.last_update_success:
            return
        self._running = True
        self.coordinator.config_entry.async_create_background_task(self.hass, self._round(), f"{DOMAIN} autopilot")

    async def _round(self) -> None:
        try:
            now = dt_util.now()
            if now.date() != self.day:
                self.day, self.spent_today = now.date(), 0
            money = read_money(self.hass, self.coordinator.config_entry.options, self.coordinator.currency)
            situation = await self._situation(money, now)
            if isinstance(situation, str):
                self._quiet(autopilot.Decision(autopilot.Action.NOTHING, situation), money)
                return
            for decision in autopilot.decide(situation):
                if decision.action is autopilot.Action.NOTHING:
                    self._quiet(decision, money)
                elif not await self._execute(decision, money):
                    break
        finally:
            self._running = False

    async def _situation(self, money: Money, now: datetime) -> autopilot.Situation | str:
        """The autopilot's situation now, or why there is none."""
        coordinator = self.coordinator
        options = coordinator.config_entry.options
        data = coordinator.data
        if money.retail is None or money.feed_in is None:
            return "the retail or feed-in price entity has no price now"
        if money.eth_price is None:
            return "no ETH price: set the exchange-rate entity, gas is paid in ETH"
        if money.per_unit is None:
            return f"{coordinator.currency.symbol} cannot be converted to {money.currency}"
        household = self._household(options, data.credit_wei, money)
        if household is None:
            return "the household's power sensors have no reading"
        try:
            gas_price = int(await coordinator.client.w3.eth.gas_price)
        except _TRANSPORT as err:
            return f"the node does not tell its gas price: {err}"
        per_unit = money.per_unit
        amounts = (money.retail, money.feed_in, option(options, CONF_MARGIN), option(options, CONF_DAILY_BUDGET))
        # In the market currency's smallest units, rounded down.
        retail, feed_in, margin, budget = (int(Fraction(amount) / per_unit) for amount in amounts)
        currency = coordinator.currency
        gas = (
            autopilot.NATIVE_GAS
            if currency.is_native
            else autopilot.ERC20_PERMIT_GAS
            if coordinator.client.takes_permits
            else autopilot.ERC20_GAS
        )
        settings = autopilot.Settings(
            margin=margin,
            daily_budget=budget,
            max_offer_wh=int(option(options, CONF_MAX_OFFER_ENERGY) * 1000),
            reserve_pct=int(option(options, CONF_BATTERY_RESERVE)),
            horizon_steps=HORIZON_STEPS,
            longest_horizon_steps=LONGEST_HORIZON_STEPS,
        )
        account = coordinator.account
        offers = [
            autopilot.MarketOffer(
                id=offer.id,
                energy_wh=offer.energy_wh,
                start_price=offer.start_price,
                price=offer.highest_price,
                min_next_bid=offer.min_next_bid,
                mine=offer.seller == account,
                leading=offer.highest_price > 0 and offer.highest_bidder == account,
            )
            for offer in data.open_offers
        ]
        self._track_offers({offer.id for offer in offers}, now)
        live = {i: c for i, c in data.connections.items() if c.status == Status.ACTIVE}
        self._first_seen = {i: self._first_seen.get(i, now) for i in live}
        known = live.keys() | {offer.id for offer in offers}
        self._bought_for = {i: steps for i, steps in self._bought_for.items() if i in known}
        connections = [
            autopilot.MarketConnection(
                id=i,
                buying=c.buyer == account,
                price=c.price,
                cap_wh=c.cap_wh,
                delivered_wh=c.delivered_wh,
                age_steps=int((now - self._first_seen[i]) / TIMESTEP),
                bought_for_steps=self._bought_for.get(i, 0),
            )
            for i, c in live.items()
        ]
        unsold = None if self._unsold_at is None else int((now - self._unsold_at) / TIMESTEP)
        ends_soon = now.timestamp() + TIMESTEP.total_seconds()
        return autopilot.Situation(
            step=0,
            tariff=autopilot.Tariff.fixed(retail, feed_in),
            settings=settings,
            fees=autopilot.Fees.for_currency(gas, gas_price, money.tokens_per_eth, currency.decimals),
            household=household,
            offers=offers,
            connections=connections,
            withdraw_due=self.withdrawn_on != now.date(),
            unsold_steps_ago=unsold if unsold is not None and unsold < HORIZON_STEPS else None,
            bidding_closes=any(o.seller != account and o.bidding_ends <= ends_soon for o in data.open_offers),
            unit=autopilot.Unit(currency.symbol, currency.decimals),
        )

    def _track_offers(self, open_ids: set[int], now: datetime) -> None:
        """Note when an offer the autopilot made left the market without a buyer."""
        data = self.coordinator.data
        for offer_id in self._my_offers - open_ids:
            self._my_offers.discard(offer_id)
            offer = data.my_offers.get(offer_id)
            if offer_id not in data.connections and (offer is None or offer.highest_price == 0):
                self._unsold_at = now

    def _household(self, options: Mapping[str, Any], credit: int, money: Money) -> autopilot.Household | None:
        """The household's export and import now, for each timestep of the horizon, and its battery."""
        export_id = options.get(CONF_GRID_EXPORT)
        if export_id:
            export = _power(self.hass, export_id)
            if export is None:
                return None
            surplus_w, need_w = max(export, Decimal(0)), max(-export, Decimal(0))
        else:
            solar = _power(self.hass, options.get(CONF_SOLAR_POWER)) if options.get(CONF_SOLAR_POWER) else Decimal(0)
            consumption = _power(self.hass, options.get(CONF_HOUSE_CONSUMPTION))
            if solar is None or consumption is None:
                return None
            surplus_w, need_w = max(solar - consumption, Decimal(0)), max(consumption - solar, Decimal(0))
        hours = Decimal(TIMESTEP.total_seconds()) / 3600
        capacity_wh = int(option(options, CONF_BATTERY_CAPACITY) * 1000)
        soc = entity_number(self.hass, options[CONF_BATTERY_SOC])[0] if options.get(CONF_BATTERY_SOC) else None
        return autopilot.Household(
            surplus_wh=[int(surplus_w * hours)] * LONGEST_HORIZON_STEPS,
            need_wh=[int(need_w * hours)] * LONGEST_HORIZON_STEPS,
            battery_wh=int(soc * capacity_wh / 100) if soc is not None else 0,
            battery_capacity_wh=capacity_wh if soc is not None else 0,
            credit=credit,
            spent_today=self.spent_today,
        )

    async def _execute(self, decision: autopilot.Decision, money: Money) -> bool:
        """Carry out one decision; False when its transaction failed."""
        coordinator = self.coordinator
        decimals = coordinator.currency.decimals
        price = Decimal(decision.price).scaleb(-decimals)
        action = decision.action
        offer_id: int | None = None
        tx_hash: str | None = None
        try:
            block = int(await coordinator.client.w3.eth.block_number)
            if action is autopilot.Action.OFFER:
                offer_id = await async_sell(coordinator, decision.energy_wh / 1000, price, BIDDING_MINUTES)
                self._my_offers.add(offer_id)
                self._bought_for[offer_id] = decision.horizon_steps
            elif action is autopilot.Action.BID:
                assert decision.offer_id is not None
                tx_hash = await async_bid(coordinator, decision.offer_id, price)
                self._bought_for[decision.offer_id] = decision.horizon_steps
            elif action is autopilot.Action.CLOSE:
                assert decision.connection_id is not None
                tx_hash = await async_close_connection(coordinator, decision.connection_id)
            else:
                tx_hash = await async_withdraw(coordinator)
                self.withdrawn_on = self.day
        except (HomeAssistantError, *_TRANSPORT) as err:
            LOGGER.warning("The autopilot could not %s (%s): %s", action.value, decision.reason, err)
            self._fire(decision, money, error=str(err) or type(err).__name__)
            return False
        self.spent_today += decision.cost if action is autopilot.Action.BID else decision.fee
        tx_hash, fee = await self._fee(tx_hash, offer_id, block, money)
        if fee is not None:
            async_dispatcher_send(self.hass, SIGNAL_FEE_PAID.format(coordinator.config_entry.entry_id), fee)
        self._quiet_reason = None  # after an action, the next reason to wait is news
        self._fire(decision, money, tx_hash=tx_hash, fee=fee)
        return True

    async def _fee(
        self, tx_hash: str | None, offer_id: int | None, since_block: int, money: Money
    ) -> tuple[str | None, Decimal | None]:
        """The transaction and what its gas cost, in Home Assistant's currency, from its receipt (an
        offer's transaction is found by its OfferCreated log: the action returns the offer's id)."""
        client = self.coordinator.client
        try:
            if offer_id is not None:
                logs = await client.contract.events.OfferCreated.get_logs(
                    from_block=since_block, argument_filters={"id": offer_id}
                )
                tx_hash = logs[0]["transactionHash"].to_0x_hex()
            receipt = await client.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except (*_TRANSPORT, IndexError) as err:
            LOGGER.debug("No receipt of the autopilot's %s: %s", tx_hash or f"offer {offer_id}", err)
            return tx_hash, None
        return tx_hash, money.gas_money(int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"]))

    def _quiet(self, decision: autopilot.Decision, money: Money) -> None:
        """Fire a reason to do nothing when it differs from the last one (numbers aside)."""
        masked = _NUMBERS.sub("#", decision.reason)
        if masked != self._quiet_reason:
            self._quiet_reason = masked
            self._fire(decision, money)

    def _fire(
        self,
        decision: autopilot.Decision,
        money: Money,
        *,
        tx_hash: str | None = None,
        fee: Decimal | None = None,
        error: str | None = None,
    ) -> None:
        market = self.coordinator.currency
        price = money.to_money(decision.price) if decision.price else None
        self.hass.bus.async_fire(
            EVENT_AUTOPILOT_DECISION,
            {
                "config_entry_id": self.coordinator.config_entry.entry_id,
                "action": decision.action.value,
                "reason": decision.reason,
                "offer_id": decision.offer_id,
                "connection_id": decision.connection_id,
                "energy_kwh": decision.energy_wh / 1000 if decision.energy_wh else None,
                "price_per_kwh": market.value(decision.price) if decision.price else None,
                "market_currency": market.symbol,
                "price": float(price) if price is not None else None,
                "fee": float(fee) if fee is not None else None,
                "currency": money.currency,
                "transaction_hash": tx_hash,
                "error": error,
            },
        )
