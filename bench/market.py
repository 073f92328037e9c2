"""Does the market pay off? The demo's trading day for seeds 1-5, against the grid alone.

Runs `python -m energykart_demo` once per seed (each with its own anvil and oracle, a few at a
time), reads the reports and prints one JSON object: per seed, every home's result against its
grid-only result, the households' fees as a share of the value traded, and the energy traded
against what the neighbours could have traded (per timestep min(surplus, demand)); over all seeds,
the worst of each. A benchmark: it measures and never asserts. Arguments after `--` go to the demo
(for example `-- --tariff day-ahead` or `-- --currency native`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT = 600


def play(seed: int, demo_args: Sequence[str], workdir: Path) -> dict[str, Any]:
    """One demo day; its report."""
    report = workdir / f"seed-{seed}.json"
    command = [
        sys.executable,
        "-m",
        "energykart_demo",
        "--no-live",
        "--seed",
        str(seed),
        "--report",
        str(report),
        *demo_args,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"the demo failed for seed {seed} (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    loaded: dict[str, Any] = json.loads(report.read_text())
    return loaded


def seed_figures(report: dict[str, Any]) -> dict[str, Any]:
    market = report["market"]
    homes = {h["name"]: h["result_vs_grid_eur"] for h in report["homes"]}
    return {
        "seed": report["seed"],
        "min_home_result_vs_grid": market["min_home_result_vs_grid_eur"],
        "home_result_vs_grid": homes,
        "fee_share": round(market["fee_share"], 5),
        "market_fee_share_with_oracle": round(market["market_fee_share"], 5),
        "traded_over_matchable": round(market["traded_over_matchable"], 5),
        "traded_kwh": market["local_traded_wh"] / 1000,
        "matchable_kwh": market["matchable_wh"] / 1000,
        "unbacked_kwh": market["unbacked_wh"] / 1000,
        "value_traded_eur": market["value_traded_eur"],
        "connections": len(report["trades"]),
        "offers": report["offers"],
        "bids": report["bids"],
        "outbids": report["outbids"],
        "conservation_ok": report["conservation_ok"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--parallel", type=int, default=3, help="demo days played at once")
    parser.add_argument("demo_args", nargs="*", help="arguments for the demo, after --")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="energykart-market-") as tmp, ThreadPoolExecutor(args.parallel) as pool:
        reports = list(pool.map(lambda seed: play(seed, args.demo_args, Path(tmp)), args.seeds))
    seeds = [seed_figures(r) for r in reports]
    economics = reports[0]["economics"]
    out = {
        "benchmark": "market",
        "demo_args": args.demo_args,
        "currency": reports[0]["currency"]["symbol"],
        "tariff": economics["tariff"],
        "gas_price_gwei": economics["gas_price_gwei"],
        "eth_price_eur": economics["eth_price_eur"],
        "min_home_result_vs_grid": str(min(Decimal(s["min_home_result_vs_grid"]) for s in seeds)),
        "max_fee_share": max(s["fee_share"] for s in seeds),
        "max_market_fee_share_with_oracle": max(s["market_fee_share_with_oracle"] for s in seeds),
        "min_traded_over_matchable": min(s["traded_over_matchable"] for s in seeds),
        "conservation_ok": all(s["conservation_ok"] for s in seeds),
        "seeds": seeds,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
