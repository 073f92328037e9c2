"""The end of the day: the JSON report and the summary printed on the console.

Amounts are integers in the currency's smallest unit (keys ending in `_wei`: wei, or 10^-18 EURe),
so the accounting can be checked exactly; keys ending in `_eur` show them in EUR. Gas is the gas
each transaction used on the chain, priced at the L2 gas price of the day (`--gas-price`) and
converted at the day's ETH rate: `fees_wei`. (`gas_fees_wei` is what the local node charged in ETH.)
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from energykart_demo.day import DayOutcome
from energykart_demo.devnet import Devnet
from energykart_demo.economics import Economics, HomeResult, home_result, share
from energykart_demo.homes import HomeDay, clock
from energykart_demo.ledger import Ledger, price_text
from energykart_demo.strategy import autopilot

ORACLE_OPERATIONS = ("settle", "finalize", "release")  # sent by the oracle's relayer and keeper
SETUP_OPERATIONS = ("deploy", "registerMeter")  # once per market and meter, not per day


def clearing_price(prices: list[tuple[int, int]]) -> int | None:
    """The energy-weighted mean price of a timestep's connections, wei per kWh."""
    energy = sum(cap for _price, cap in prices)
    return None if energy == 0 else sum(price * cap for price, cap in prices) // energy


def gas_by_operation(outcome: DayOutcome) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"transactions": 0, "gas": 0})
    for use in outcome.gas:
        table[use.kind]["transactions"] += 1
        table[use.kind]["gas"] += use.gas
    return dict(sorted(table.items()))


def _per_step(ledger: Ledger, home: int, steps: int, *, selling: bool) -> list[int]:
    energy = [0] * steps
    for conn in ledger.connections.values():
        if (conn.seller if selling else conn.buyer) == home:
            for k, wh in conn.deliveries.items():
                energy[k] += wh
    return energy


def home_results(outcome: DayOutcome, devnet: Devnet, days: list[HomeDay], economics: Economics) -> list[HomeResult]:
    """Each home's day priced: the market's payments, its fees at the L2 gas price, its grid bill."""
    ledger = outcome.ledger
    ledger.settle_books()
    steps = len(ledger.figures)
    results = []
    for i, day in enumerate(days):
        book = ledger.books[i]
        fees = sum(economics.fee(g.gas) for g in outcome.gas if g.sender == devnet.homes[i])
        sold = _per_step(ledger, i, steps, selling=True)
        bought = _per_step(ledger, i, steps, selling=False)
        results.append(home_result(day, sold, bought, book.earned_wei, book.paid_wei, fees, economics.tariff))
    return results


def _eur(economics: Economics, units: int) -> str:
    return f"{economics.to_eur(units):.6f}"


def _decisions(outcome: DayOutcome, home: int) -> list[dict[str, Any]]:
    return [
        {"timestep": step, "action": str(d.action), "reason": d.reason}
        for step, d in outcome.traders.logs[home].decisions
    ]


def build_report(
    outcome: DayOutcome,
    devnet: Devnet,
    days: list[HomeDay],
    steps: int,
    seed: int,
    economics: Economics,
    settings: autopilot.Settings,
) -> dict[str, Any]:
    ledger = outcome.ledger
    results = home_results(outcome, devnet, days, economics)
    checks = {check.home: check for check in outcome.balances}
    homes = []
    for i, (day, result) in enumerate(zip(days, results, strict=True)):
        book = ledger.books[i]
        balance = checks[i]
        homes.append(
            {
                "name": day.spec.name,
                "kind": day.spec.kind,
                "account": devnet.homes[i],
                "meter": devnet.meters[i].address,
                "solar_kwp": day.spec.solar_kwp,
                "battery_wh": day.spec.battery_wh,
                "surplus_wh": sum(day.surplus_wh),
                "imported_wh": sum(day.import_wh),
                "sold_wh": book.sold_wh,
                "bought_wh": book.bought_wh,
                "grid_import_wh": result.grid_import_wh,
                "grid_export_wh": result.grid_export_wh,
                "unbacked_wh": result.unbacked_wh,
                "earned_wei": book.earned_wei,
                "paid_wei": book.paid_wei,
                "fees_wei": result.fees,
                "grid_cost_wei": result.grid_cost,
                "result_wei": result.result,
                "grid_only_result_wei": result.grid_only_result,
                "result_vs_grid_wei": result.vs_grid,
                "result_eur": _eur(economics, result.result),
                "grid_only_result_eur": _eur(economics, result.grid_only_result),
                "result_vs_grid_eur": _eur(economics, result.vs_grid),
                "fees_eur": _eur(economics, result.fees),
                "escrowed_wei": book.escrowed_wei,
                "outbid_refund_wei": book.outbid_wei,
                "connection_refund_wei": book.refund_wei,
                "withdrawn_wei": book.withdrawn_wei,
                "credit_left_wei": balance.credit_left_wei,
                "gas_fees_wei": sum(g.fee_wei for g in outcome.gas if g.sender == devnet.homes[i]),
                "balance_change_wei": balance.end_wei - balance.start_wei,
                "balance_ok": balance.ok,
                "decisions": _decisions(outcome, i),
            }
        )
    timesteps = [
        {
            "timestep": k,
            "time": clock(k, steps),
            "retail_eur_per_kwh": str(economics.retail_eur[k]),
            "feed_in_eur_per_kwh": str(economics.feed_in_eur[k]),
            "surplus_wh": f.surplus_wh,
            "demand_wh": f.demand_wh,
            "matchable_wh": min(f.surplus_wh, f.demand_wh),
            "offered_wh": f.offered_wh,
            "traded_wh": f.traded_wh,
            "paid_wei": f.paid_wei,
            "clearing_price_wei_per_kwh": clearing_price(f.prices),
        }
        for k, f in enumerate(ledger.figures)
    ]
    trades = [
        {
            "connection": c.id,
            "timestep": c.step,
            "seller": ledger.names[c.seller],
            "buyer": ledger.names[c.buyer],
            "price_wei_per_kwh": c.price,
            "cap_wh": c.cap_wh,
            "delivered_wh": c.delivered_wh,
            "delivered_wh_by_timestep": {str(k): wh for k, wh in sorted(c.deliveries.items())},
            "paid_wei": c.paid_wei,
            "refund_wei": c.refund_wei,
            "closed_timestep": c.closed_step,
            "ended_timestep": c.ended_step,
            "status": c.status.name.lower(),
        }
        for c in sorted(ledger.connections.values(), key=lambda c: c.id)
    ]
    gas = gas_by_operation(outcome)
    return {
        "seed": seed,
        "steps": steps,
        "chain_id": devnet.chain_id,
        "contract": devnet.market,
        "deploy_block": devnet.deploy_block,
        "energy_traded_wh": ledger.energy_traded_wh,
        "payments_wei": ledger.payments_wei,
        "gas_used": {"total": sum(g["gas"] for g in gas.values()), "by_operation": gas},
        "conservation_ok": outcome.conservation_ok,
        "conservation": {
            "checks": len(outcome.conservation),
            "failures": [
                {"after_timestep": c.step, "contract_wei": c.contract_wei, "held_wei": c.held_wei}
                for c in outcome.conservation
                if not c.ok
            ],
            "balances_ok": all(b.ok for b in outcome.balances),
        },
        "currency": {"address": devnet.currency, "symbol": devnet.symbol, "decimals": 18},
        "economics": _economics(economics, settings),
        "market": market_figures(outcome, timesteps, homes, economics),
        "offers": len(ledger.offers),
        "bids": sum(o.bids for o in ledger.offers.values()),
        "outbids": ledger.outbids,
        "readings_settled": ledger.readings_settled,
        "readings_skipped": ledger.readings_skipped,
        "trades": trades,
        "homes": homes,
        "timesteps": timesteps,
    }


def _economics(economics: Economics, settings: autopilot.Settings) -> dict[str, Any]:
    return {
        "tariff": economics.tariff_name,
        "gas_price_gwei": str(economics.gas_price_wei / 10**9),
        "eth_price_eur": str(economics.eth_price),
        "fee_per_million_gas_wei": economics.fee(10**6),
        "autopilot": {
            "margin_wei_per_kwh": settings.margin,
            "daily_budget_wei": settings.daily_budget,
            "max_offer_wh": settings.max_offer_wh,
            "horizon_timesteps": settings.horizon_steps,
            "max_fee_share": float(settings.max_fee_share),
        },
    }


def market_figures(
    outcome: DayOutcome, timesteps: list[dict[str, Any]], homes: list[dict[str, Any]], economics: Economics
) -> dict[str, Any]:
    """Traded against matchable energy (per timestep min(surplus, demand)) and fees against value.

    Energy traded in a timestep beyond what was matchable in it was not there to trade (the buyer's
    import came from the grid): it is counted as unbacked, not as traded local energy."""
    matchable = sum(t["matchable_wh"] for t in timesteps)
    backed = sum(min(t["traded_wh"], t["matchable_wh"]) for t in timesteps)
    traded = sum(t["traded_wh"] for t in timesteps)
    value = outcome.ledger.payments_wei
    home_fees = sum(h["fees_wei"] for h in homes)
    oracle_fees = sum(economics.fee(g.gas) for g in outcome.gas if g.kind in ORACLE_OPERATIONS)
    return {
        "matchable_wh": matchable,
        "traded_wh": traded,
        "local_traded_wh": backed,
        "unbacked_wh": traded - backed,
        "traded_over_matchable": float(share(backed, matchable)),
        "value_traded_wei": value,
        "value_traded_eur": _eur(economics, value),
        "home_fees_wei": home_fees,
        "fee_share": float(share(home_fees, value)),
        "oracle_fees_wei": oracle_fees,
        "oracle_fees_eur": _eur(economics, oracle_fees),
        "market_fee_share": float(share(home_fees + oracle_fees, value)),
        "min_home_result_vs_grid_wei": min(h["result_vs_grid_wei"] for h in homes),
        "min_home_result_vs_grid_eur": min((h["result_vs_grid_eur"] for h in homes), key=Decimal),
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def print_summary(console: Console, report: dict[str, Any]) -> None:
    symbol = report["currency"]["symbol"]
    economics = report["economics"]
    market = report["market"]
    homes = Table(
        title="homes, EUR: market = earned - paid; result = market - fees - grid bill",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    columns = ("home", "sold kWh", "bought kWh", "market", "fees", "result", "grid only", "vs grid")
    for column in columns:
        homes.add_column(column, justify="left" if column == "home" else "right")
    rate = Decimal(economics["eth_price_eur"]) if symbol == "ETH" else Decimal(1)
    for home in report["homes"]:
        vs_grid = Decimal(home["result_vs_grid_eur"])
        homes.add_row(
            home["name"],
            f"{home['sold_wh'] / 1000:.3f}",
            f"{home['bought_wh'] / 1000:.3f}",
            _eur_text(home["earned_wei"] - home["paid_wei"], rate),
            f"{-Decimal(home['fees_eur']):.4f}",
            f"{Decimal(home['result_eur']):.4f}",
            f"{Decimal(home['grid_only_result_eur']):.4f}",
            f"[green]{vs_grid:+.4f}[/green]" if vs_grid >= 0 else f"[red]{vs_grid:+.4f}[/red]",
        )
    gas = Table(title="gas used", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("operation", "transactions", "gas", "gas per transaction"):
        gas.add_column(column, justify="left" if column == "operation" else "right")
    for kind, use in report["gas_used"]["by_operation"].items():
        gas.add_row(kind, str(use["transactions"]), f"{use['gas']:,}", f"{use['gas'] // use['transactions']:,}")
    gas.add_row("total", "", f"{report['gas_used']['total']:,}", "", style="bold")
    console.print(homes)
    console.print(gas)
    prices = [t["clearing_price_wei_per_kwh"] for t in report["timesteps"] if t["clearing_price_wei_per_kwh"]]
    price_range = f"{price_text(min(prices), symbol)} to {price_text(max(prices), symbol)}" if prices else "no trades"
    console.print(
        f"grid tariff {economics['tariff']}; gas {economics['gas_price_gwei']} gwei (an L2), "
        f"1 ETH = {economics['eth_price_eur']} EUR; settled in {symbol}",
        highlight=False,
    )
    console.print(
        f"traded {market['local_traded_wh'] / 1000:.3f} kWh of {market['matchable_wh'] / 1000:.3f} kWh matchable "
        f"({market['traded_over_matchable']:.1%}; {market['unbacked_wh']} Wh unbacked) over "
        f"{len(report['trades'])} connections ({report['offers']} offers, {report['bids']} bids, "
        f"{report['outbids']} outbid), prices {price_range}; value {Decimal(market['value_traded_eur']):.4f} EUR, "
        f"households' fees {market['fee_share']:.2%} of it (with the oracle's {market['market_fee_share']:.2%}); "
        f"worst home vs grid {Decimal(market['min_home_result_vs_grid_eur']):+.4f} EUR; "
        f"{report['readings_settled']} signed readings settled by the oracle",
        highlight=False,
    )
    verdict = "[green]OK[/green]" if report["conservation_ok"] else "[red]FAILED[/red]"
    console.print(
        f"conservation {verdict}: contract balance == escrows + credits after each of "
        f"{report['conservation']['checks']} checks; every wallet changed by exactly its payments"
        + (" less gas" if symbol == "ETH" else f" (gas is paid in ETH, apart from the {symbol} wallets)")
    )


def _eur_text(units: int, rate: Decimal) -> str:
    return f"{Decimal(units) / 10**18 * rate:.4f}"
