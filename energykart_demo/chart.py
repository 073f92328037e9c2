"""The day as a PNG: the neighbourhood's surplus and traded energy, and the clearing prices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt

GWEI = 10**9


def draw_chart(report: dict[str, Any], path: Path) -> None:
    steps = report["timesteps"]
    x = list(range(len(steps)))
    surplus = [s["surplus_wh"] / 1000 for s in steps]
    demand = [s["demand_wh"] / 1000 for s in steps]
    traded = [s["traded_wh"] / 1000 for s in steps]
    priced = [
        (k, s["clearing_price_wei_per_kwh"] / GWEI) for k, s in enumerate(steps) if s["clearing_price_wei_per_kwh"]
    ]

    fig, energy_axis = plt.subplots(figsize=(10, 5), dpi=100)
    energy_axis.bar([k - 0.2 for k in x], surplus, width=0.4, color="#f2b134", label="solar + battery surplus")
    energy_axis.bar([k + 0.2 for k in x], traded, width=0.4, color="#3a7d44", label="traded (metered, settled)")
    energy_axis.plot(x, demand, color="#7a7a7a", linestyle="--", linewidth=1, label="imports (demand)")
    energy_axis.set_ylabel("energy per timestep (kWh)")
    energy_axis.set_xlabel("time of day")
    every = max(1, len(steps) // 12)
    energy_axis.set_xticks(x[::every], [s["time"] for s in steps][::every])

    price_axis = energy_axis.twinx()
    if priced:
        price_axis.plot([k for k, _ in priced], [p for _, p in priced], "o-", color="#1f4e9c", label="clearing price")
    price_axis.set_ylabel("clearing price (gwei per kWh)")
    price_axis.set_ylim(bottom=0)

    handles, labels = energy_axis.get_legend_handles_labels()
    price_handles, price_labels = price_axis.get_legend_handles_labels()
    fig.legend(handles + price_handles, labels + price_labels, loc="lower center", ncol=4, fontsize="small")
    homes = len(report["homes"])
    energy_axis.set_title(
        f"Energy-Kart: {homes} homes, {len(steps)} timesteps, {report['energy_traded_wh'] / 1000:.2f} kWh traded"
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
