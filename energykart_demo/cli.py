"""`make demo` / `python -m energykart_demo`: a microgrid trading day on a local chain.

Starts anvil (or uses --rpc-url), deploys the market, registers a meter per home, starts the
oracle, plays the day (every home trading with the integration's autopilot against a grid tariff,
its gas priced like an L2's), then prints a summary and writes a JSON report and a PNG chart.
Exit status: 0 when money was conserved, 1 when it was not, 2 when the day could not be played.
"""

from __future__ import annotations

import argparse
import asyncio
import decimal
import signal
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import aiohttp
from rich.console import Console
from web3.exceptions import Web3Exception

from devchain.anvil import Anvil
from energykart_demo.chart import draw_chart
from energykart_demo.day import DayOutcome, DemoError, TradingDay
from energykart_demo.devnet import TOKEN_SYMBOL, Devnet, DevnetError, prepare
from energykart_demo.economics import (
    DEFAULT_ETH_PRICE,
    DEFAULT_GAS_PRICE_GWEI,
    FIXED_FEED_IN,
    FIXED_RETAIL,
    Economics,
    make_economics,
)
from energykart_demo.homes import HomeDay, plan_homes
from energykart_demo.live import LiveView, PlainView, View
from energykart_demo.market import TradeRejected
from energykart_demo.oracle_process import OracleError, OracleProcess
from energykart_demo.report import build_report, print_summary, write_report
from energykart_demo.strategy import autopilot
from energykart_demo.traders import SESSION_HOURS

DEFAULT_REPORT = Path("out/demo-report.json")
MAX_HOMES = 18  # anvil's 20 default accounts: a deployer, the homes, the relayer
LIVE_PACE = 2.0  # a live day of 24 timesteps lasts about a minute, slow enough to follow
DEFAULT_MARGIN = Decimal("0.07")  # EUR per kWh: offers from feed-in + margin, bids up to retail - margin
DEFAULT_MAX_OFFER_KWH = Decimal(4)
DEFAULT_BUDGET = Decimal(5)  # EUR a day


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {text}")
    return value


def _hours(text: str) -> tuple[int, ...]:
    try:
        hours = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of hours: {text!r}") from None
    if not hours or not all(0 <= hour < 24 for hour in hours):
        raise argparse.ArgumentTypeError(f"hours must be from 0 to 23, got {text}")
    return hours


def chart_path(report: Path) -> Path:
    """The chart's file, next to the report: demo-report.json -> demo-chart.png, day.json -> day-chart.png."""
    stem = report.stem
    return report.with_name((stem.replace("report", "chart") if "report" in stem else f"{stem}-chart") + ".png")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m energykart_demo",
        description="Play a compressed trading day of a solar microgrid on a local chain, settled by the real oracle.",
        epilog="Exit status: 0 money conserved, 1 conservation failed, 2 the day could not be played.",
    )
    parser.add_argument("--homes", type=_positive, default=6, help=f"simulated homes, 2 to {MAX_HOMES} (default 6)")
    parser.add_argument("--steps", type=_positive, default=24, help="timesteps of 15 chain minutes (default 24)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the weather, the homes and the bids (default 1)")
    parser.add_argument(
        "--rpc-url", help="use this node (with unlocked accounts) instead of starting an embedded anvil"
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=DEFAULT_REPORT,
        help="JSON report path; the PNG chart is written next to it (default %(default)s -> out/demo-chart.png)",
    )
    parser.add_argument(
        "--currency",
        choices=("native", "token"),
        default="token",
        help=f"settle in an ERC-20 stablecoin ({TOKEN_SYMBOL}, 1 EUR) deployed for the day (default) or in the "
        "chain's coin (ETH, at --eth-price)",
    )
    parser.add_argument(
        "--tariff",
        choices=("fixed", "day-ahead"),
        default="fixed",
        help=f"the grid's prices: fixed (default: --retail {FIXED_RETAIL}, --feed-in {FIXED_FEED_IN} EUR/kWh) or "
        "a day-ahead curve (spot + 0.20 EUR/kWh retail, spot - 0.01 feed-in)",
    )
    parser.add_argument("--retail", type=_amount, default=FIXED_RETAIL, help="fixed retail price, EUR/kWh")
    parser.add_argument("--feed-in", type=_amount, default=FIXED_FEED_IN, help="fixed feed-in price, EUR/kWh")
    parser.add_argument(
        "--gas-price",
        type=_amount,
        default=DEFAULT_GAS_PRICE_GWEI,
        help="gas price in gwei that fees are priced at, like an L2's (default %(default)s: Arbitrum One's floor)",
    )
    parser.add_argument(
        "--eth-price",
        type=_amount,
        default=DEFAULT_ETH_PRICE,
        help="EUR per ETH, fixed for the day: converts fees (paid in ETH) and, with --currency native, prices "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--margin", type=_amount, default=DEFAULT_MARGIN, help="the autopilot's margin, EUR/kWh (default %(default)s)"
    )
    parser.add_argument(
        "--max-offer-kwh",
        type=_amount,
        default=DEFAULT_MAX_OFFER_KWH,
        help="the autopilot's largest offer, kWh (default %(default)s)",
    )
    parser.add_argument(
        "--sessions",
        type=_hours,
        default=SESSION_HOURS,
        help="hours at which the market's sessions start; an offer or bid covers the rest of its session "
        f"(default {','.join(map(str, SESSION_HOURS))}: morning, solar hours, evening peak, night)",
    )
    parser.add_argument(
        "--budget", type=_amount, default=DEFAULT_BUDGET, help="each home's daily budget, EUR (default %(default)s)"
    )
    parser.add_argument("--no-live", action="store_true", help="plain log lines instead of the live table")
    parser.add_argument(
        "--pace",
        type=float,
        help=f"least wall-clock seconds per timestep (default {LIVE_PACE:g} with the live table, 0 with --no-live)",
    )
    args = parser.parse_args(argv)
    if not 2 <= args.homes <= MAX_HOMES:
        parser.error(f"--homes must be from 2 to {MAX_HOMES}")
    if args.pace is not None and not 0 <= args.pace <= 60:
        parser.error("--pace must be from 0 to 60 seconds")
    if args.steps < 3:
        parser.error("--steps must be at least 3 (an offer needs a timestep to be awarded and one to deliver)")
    if args.eth_price == 0:
        parser.error("--eth-price must be above 0")
    return args


def autopilot_settings(args: argparse.Namespace, economics: Economics) -> autopilot.Settings:
    """The homes' autopilot options (each decision's horizon is the rest of its session)."""
    return autopilot.Settings(
        margin=economics.to_units(args.margin),
        daily_budget=economics.to_units(args.budget),
        max_offer_wh=int(args.max_offer_kwh * 1000),
    )


async def _play(
    devnet: Devnet,
    days: list[HomeDay],
    args: argparse.Namespace,
    oracle_url: str,
    console: Console,
    economics: Economics,
    settings: autopilot.Settings,
) -> DayOutcome:
    timeout = aiohttp.ClientTimeout(total=60)
    kinds = [d.spec.kind for d in days]
    view: View = PlainView(console) if args.no_live else LiveView(console, kinds, devnet.symbol)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        pace = args.pace if args.pace is not None else 0.0 if args.no_live else LIVE_PACE
        day = TradingDay(
            devnet, days, args.steps, args.seed, session, oracle_url, view, economics, settings, args.sessions, pace
        )
        return await day.play()


def run(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(soft_wrap=True)
    days = plan_homes(args.homes, args.steps, args.seed)
    oracle: OracleProcess | None = None
    with ExitStack() as stack:
        rpc_url = args.rpc_url
        try:
            if rpc_url is None:
                rpc_url = stack.enter_context(Anvil(accounts=max(20, args.homes + 2))).url
                console.print(f"anvil started on {rpc_url}")
            devnet = prepare(rpc_url, args.homes, args.seed, args.currency)
            settles_in = "ETH" if devnet.symbol == "ETH" else f"{devnet.symbol} (token {devnet.currency})"
            console.print(
                f"market {devnet.market} deployed on chain {devnet.chain_id}, settling in {settles_in}; "
                f"{args.homes} meters registered"
            )
            oracle = stack.enter_context(OracleProcess(rpc_url, devnet.market, bytes(devnet.relayer.key)))
            console.print(f"oracle running at {oracle.url} (relayer {devnet.relayer.address})")
            economics = make_economics(
                devnet.symbol,
                args.steps,
                args.tariff,
                args.gas_price,
                args.eth_price,
                args.retail,
                args.feed_in,
                permits=bool(devnet.home_keys),
            )
            settings = autopilot_settings(args, economics)
            console.print(
                f"grid tariff {args.tariff}; gas priced at {args.gas_price} gwei like an L2, 1 ETH = "
                f"{args.eth_price} EUR; autopilot margin {args.margin} EUR/kWh, offers up to {args.max_offer_kwh} kWh; "
                f"sessions from {', '.join(f'{h}:00' for h in args.sessions)}",
                highlight=False,
            )
            outcome = asyncio.run(_play(devnet, days, args, oracle.url, console, economics, settings))
        except (
            DevnetError,
            OracleError,
            DemoError,
            TradeRejected,
            FileNotFoundError,
            TimeoutError,
            aiohttp.ClientError,
            Web3Exception,
        ) as err:
            console.print(f"[red]energykart demo: {err}[/red]")
            if oracle is not None:
                console.print(f"oracle log:\n{oracle.log_tail()}", markup=False, highlight=False)
            return 2
    report = build_report(outcome, devnet, days, args.steps, args.seed, economics, settings)
    write_report(report, args.report)
    chart = chart_path(args.report)
    draw_chart(report, chart)
    print_summary(console, report)
    console.print(f"report: {args.report}  chart: {chart}")
    return 0 if report["conservation_ok"] else 1


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the context managers: the oracle and anvil stop too


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sys.exit(run())


if __name__ == "__main__":
    main()
