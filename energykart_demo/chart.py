"""The day as a PNG: the neighbourhood's surplus, matchable and traded energy; prices against the grid's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt

UNIT = 10**18  # wei per ETH, and 10^-18 units per EURe


def draw_chart(report: dict[str, Any], path: Path) -> None:
    steps = report["timesteps"]
    x = list(range(len(steps)))
    surplus = [s["surplus_wh"] / 1000 for s in steps]
    demand = [s["demand_wh"] / 1000 for s in steps]
    matchable = [s["matchable_wh"] / 1000 for s in steps]
    traded = [s["traded_wh"] / 1000 for s in steps]
    eur = float(report["economics"]["eth_price_eur"]) if report["currency"]["symbol"] == "ETH" else 1.0
    # what the energy traded in each timestep cost per kWh
    priced = [(k, s["paid_wei"] * 1000 / s["traded_wh"] / UNIT * eur) for k, s in enumerate(steps) if s["traded_wh"]]
    retail = [float(s["retail_eur_per_kwh"]) for s in steps]
    feed_in = [float(s["feed_in_eur_per_kwh"]) for s in steps]

    fig, energy_axis = plt.subplots(figsize=(10, 5), dpi=100)
    energy_axis.bar([k - 0.2 for k in x], surplus, width=0.4, color="#f2b134", label="solar + battery surplus")
    energy_axis.bar([k + 0.2 for k in x], traded, width=0.4, color="#3a7d44", label="traded (metered, settled)")
    energy_axis.plot(x, demand, color="#7a7a7a", linestyle="--", linewidth=1, label="imports (demand)")
    energy_axis.step(x, matchable, where="mid", color="#3a7d44", linewidth=1, label="matchable: min(surplus, demand)")
    energy_axis.set_ylabel("energy per timestep (kWh)")
    energy_axis.set_xlabel("time of day")
    every = max(1, len(steps) // 12)
    energy_axis.set_xticks(x[::every], [s["time"] for s in steps][::every])

    price_axis = energy_axis.twinx()
    price_axis.step(x, retail, where="mid", color="#b03a2e", linewidth=1, label="grid retail")
    price_axis.step(x, feed_in, where="mid", color="#d98880", linewidth=1, label="grid feed-in")
    if priced:
        price_axis.plot([k for k, _ in priced], [p for _, p in priced], "o", color="#1f4e9c", label="P2P price")
    price_axis.set_ylabel("price (EUR per kWh)")
    price_axis.set_ylim(bottom=0)

    handles, labels = energy_axis.get_legend_handles_labels()
    price_handles, price_labels = price_axis.get_legend_handles_labels()
    fig.legend(handles + price_handles, labels + price_labels, loc="lower center", ncol=4, fontsize="small")
    homes = len(report["homes"])
    market = report["market"]
    energy_axis.set_title(
        f"Energy-Kart: {homes} homes, {market['local_traded_wh'] / 1000:.2f} of {market['matchable_wh'] / 1000:.2f} "
        f"kWh matchable traded, fees {market['fee_share']:.1%} of the value"
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
