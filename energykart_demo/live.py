"""What the demo shows while it runs: a live rich table, or plain log lines (--no-live)."""

from __future__ import annotations

from collections import deque
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from energykart_demo.ledger import ETH, Ledger, eth, gwei
from oracle.chain import Status

RECENT_LINES = 8
SHOWN_CONNECTIONS = 8


class View(Protocol):
    def begin(self, total: int, ledger: Ledger) -> None: ...

    def step(self, done: int, label: str) -> None: ...

    def lines(self, lines: list[str]) -> None: ...

    def end(self) -> None: ...


class PlainView:
    """One log line per event, for CI and tests."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._label = ""

    def begin(self, total: int, ledger: Ledger) -> None:
        self._console.print(f"playing {total} timesteps ({len(ledger.figures)} of trading, then closing the day)")

    def step(self, done: int, label: str) -> None:
        self._label = label

    def lines(self, lines: list[str]) -> None:
        for line in lines:
            self._console.print(f"[{self._label}] {line}", highlight=False, markup=False)

    def end(self) -> None:
        return None


class LiveView:
    """A live screen: progress, this timestep's offers, the connections, each home's trading, recent events."""

    def __init__(self, console: Console, kinds: list[str], symbol: str = "ETH") -> None:
        self._console = console
        self._ledger = Ledger([], [], [], 0)
        self._kinds = kinds
        self._symbol = symbol
        # prices per kWh in gwei for ETH, in the token itself for a stablecoin
        self._per_kwh = "gwei/kWh" if symbol == "ETH" else f"{symbol}/kWh"
        self._recent: deque[str] = deque(maxlen=RECENT_LINES)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._progress.add_task("trading day", total=None)
        self._live = Live(console=console, refresh_per_second=8)

    def _price(self, units: int) -> str:
        return gwei(units) if self._symbol == "ETH" else f"{units / ETH:.4f}"

    def _money(self, units: int) -> str:
        return eth(units) if self._symbol == "ETH" else f"{units / ETH:.4f}"

    def begin(self, total: int, ledger: Ledger) -> None:
        self._ledger = ledger
        self._progress.update(self._task, total=total)
        self._live.update(self._render())
        self._live.start()

    def step(self, done: int, label: str) -> None:
        self._progress.update(self._task, completed=done, description=label)
        self._live.update(self._render())

    def lines(self, lines: list[str]) -> None:
        self._recent.extend(lines)
        self._live.update(self._render())

    def end(self) -> None:
        self._live.update(self._render())
        self._live.stop()

    def _render(self) -> Group:
        return Group(
            self._progress,
            self._offers(),
            self._connections(),
            self._homes(),
            Panel("\n".join(self._recent) or "…", title="events", title_align="left"),
        )

    def _offers(self) -> Table:
        table = Table(title="offers", title_justify="left", expand=True)
        for column in (
            "id",
            "seller",
            "Wh",
            f"start {self._per_kwh}",
            f"highest {self._per_kwh}",
            "bidder",
            "bids",
            "status",
        ):
            table.add_column(column, justify="right" if column in ("Wh", "bids") or "/kWh" in column else "left")
        names = self._ledger.names
        latest = max((o.step for o in self._ledger.offers.values()), default=0)
        for offer in self._ledger.offers.values():
            if offer.step == latest or offer.status == "bidding":
                table.add_row(
                    f"#{offer.id}",
                    names[offer.seller],
                    str(offer.energy_wh),
                    self._price(offer.start_price),
                    self._price(offer.price) if offer.bidder is not None else "-",
                    names[offer.bidder] if offer.bidder is not None else "-",
                    str(offer.bids),
                    offer.status,
                )
        return table

    def _connections(self) -> Table:
        table = Table(title="connections", title_justify="left", expand=True)
        for column in (
            "id",
            "seller → buyer",
            self._per_kwh,
            "cap Wh",
            "delivered Wh",
            f"paid {self._symbol}",
            "status",
        ):
            table.add_column(column, justify="left" if column in ("id", "seller → buyer", "status") else "right")
        names = self._ledger.names
        connections = sorted(self._ledger.connections.values(), key=lambda c: (not c.open, -c.id))
        for conn in connections[:SHOWN_CONNECTIONS]:
            style = "green" if conn.status is Status.ACTIVE else "dim" if not conn.open else ""
            table.add_row(
                f"#{conn.id}",
                f"{names[conn.seller]} → {names[conn.buyer]}",
                self._price(conn.price),
                str(conn.cap_wh),
                str(conn.delivered_wh),
                self._money(conn.paid_wei),
                conn.status.name.lower(),
                style=style,
            )
        return table

    def _homes(self) -> Table:
        self._ledger.settle_books()
        table = Table(title="payments", title_justify="left", expand=True)
        for column in ("home", "kind", "sold kWh", "bought kWh", f"earned {self._symbol}", f"paid {self._symbol}"):
            table.add_column(column, justify="left" if column in ("home", "kind") else "right")
        for name, kind, book in zip(self._ledger.names, self._kinds, self._ledger.books, strict=True):
            table.add_row(
                name,
                kind,
                f"{book.sold_wh / 1000:.3f}",
                f"{book.bought_wh / 1000:.3f}",
                self._money(book.earned_wei),
                self._money(book.paid_wei),
            )
        return table
