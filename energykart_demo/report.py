"""The end of the day: the JSON report and the summary printed on the console."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from energykart_demo.day import DayOutcome
from energykart_demo.devnet import Devnet
from energykart_demo.homes import HomeDay, clock
from energykart_demo.ledger import eth, gwei


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


def build_report(outcome: DayOutcome, devnet: Devnet, days: list[HomeDay], steps: int, seed: int) -> dict[str, Any]:
    ledger = outcome.ledger
    ledger.settle_books()
    fees = {check.home: check for check in outcome.balances}
    homes = []
    for i, day in enumerate(days):
        book = ledger.books[i]
        balance = fees[i]
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
                "earned_wei": book.earned_wei,
                "paid_wei": book.paid_wei,
                "escrowed_wei": book.escrowed_wei,
                "outbid_refund_wei": book.outbid_wei,
                "connection_refund_wei": book.refund_wei,
                "withdrawn_wei": book.withdrawn_wei,
                "gas_fees_wei": sum(g.fee_wei for g in outcome.gas if g.sender == devnet.homes[i]),
                "balance_change_wei": balance.end_wei - balance.start_wei,
                "balance_ok": balance.ok,
            }
        )
    timesteps = [
        {
            "timestep": k,
            "time": clock(k, steps),
            "surplus_wh": f.surplus_wh,
            "demand_wh": f.demand_wh,
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
        "offers": len(ledger.offers),
        "bids": sum(o.bids for o in ledger.offers.values()),
        "outbids": ledger.outbids,
        "readings_settled": ledger.readings_settled,
        "readings_skipped": ledger.readings_skipped,
        "trades": trades,
        "homes": homes,
        "timesteps": timesteps,
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def print_summary(console: Console, report: dict[str, Any]) -> None:
    homes = Table(title="homes", title_justify="left")
    symbol = report["currency"]["symbol"]
    for column in ("home", "kind", "sold kWh", "bought kWh", f"earned {symbol}", f"paid {symbol}", "balance ok"):
        homes.add_column(column, justify="left" if column in ("home", "kind") else "right")
    for home in report["homes"]:
        homes.add_row(
            home["name"],
            home["kind"],
            f"{home['sold_wh'] / 1000:.3f}",
            f"{home['bought_wh'] / 1000:.3f}",
            eth(home["earned_wei"]),
            eth(home["paid_wei"]),
            "yes" if home["balance_ok"] else "[red]NO[/red]",
        )
    gas = Table(title="gas used", title_justify="left")
    for column in ("operation", "transactions", "gas", "gas per transaction"):
        gas.add_column(column, justify="left" if column == "operation" else "right")
    for kind, use in report["gas_used"]["by_operation"].items():
        gas.add_row(kind, str(use["transactions"]), f"{use['gas']:,}", f"{use['gas'] // use['transactions']:,}")
    gas.add_row("total", "", f"{report['gas_used']['total']:,}", "", style="bold")
    console.print(homes)
    console.print(gas)
    prices = [t["clearing_price_wei_per_kwh"] for t in report["timesteps"] if t["clearing_price_wei_per_kwh"]]
    unit = "gwei" if symbol == "ETH" else f"n{symbol}"  # 10^-9 of the currency, both with 18 decimals
    price_range = f"{gwei(min(prices))}-{gwei(max(prices))} {unit}/kWh" if prices else "no trades"
    console.print(
        f"traded {report['energy_traded_wh'] / 1000:.3f} kWh over {len(report['trades'])} connections "
        f"({report['offers']} offers, {report['bids']} bids, {report['outbids']} outbid), "
        f"paid {eth(report['payments_wei'])} {symbol}, prices {price_range}; "
        f"{report['readings_settled']} signed readings settled by the oracle",
        highlight=False,
    )
    verdict = "[green]OK[/green]" if report["conservation_ok"] else "[red]FAILED[/red]"
    console.print(
        f"conservation {verdict}: contract balance == escrows + credits after each of "
        f"{report['conservation']['checks']} checks; every wallet changed by exactly its payments"
        + (" less gas" if symbol == "ETH" else f" (gas is paid in ETH, apart from the {symbol} wallets)")
    )
