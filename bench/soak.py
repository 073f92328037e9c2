"""Soak: the oracle under a steady load of signed readings for minutes, with its node and itself killed.

Starts anvil with a `--state` file (so the chain survives a restart on the same port), deploys a
market, registers `--meters` meters and starts one oracle process settling every `--timestep`
seconds. Each meter signs a reading every `--interval` seconds; the meters post them in batches
and keep the ones without an answer to post again, as real meters do. Meanwhile the node is
stopped and restarted `--node-restarts` times and the oracle is killed (SIGKILL) and restarted
`--oracle-kills` times, spread over the run. The oracle's RSS is sampled every second.

At the end the meters post what they still hold, the oracle drains its queue, and every reading
it accepted (answered 2xx) is looked up: settled on chain (in a ReadingsAccepted event), or
superseded (the chain holds a newer reading of its meter, whose cumulative covers it), or lost.
Prints one JSON object; exits 1 when a reading was lost or settled twice. It measures and never
asserts timings or memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# `python bench/soak.py` from the repository root: make its packages importable
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from eth_account import Account
from eth_keys.datatypes import PrivateKey
from web3 import Web3
from web3.contract import Contract

from bench.oracle_ingest import fast_sign, relayer_account, wait_healthy
from devchain.anvil import Anvil, free_port
from devchain.deploy import deploy_market, register_meters
from oracle.readings import Domain, SignedReading

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 4  # concurrent HTTP clients; each posts for its own meters, so a meter's readings stay in order
DRAIN_TIMEOUT = 180.0
FLAT_GROWTH = 0.20  # RSS growth after warm-up below which memory counts as flat

type ReadingKey = tuple[str, int, int]  # (meter, cumulativeWh, timestamp), as in ReadingsAccepted


@dataclass
class SimulatedMeter:
    key: PrivateKey
    address: str
    wh: int = 0
    timestamp: int = 0
    unsent: list[SignedReading] = field(default_factory=list)  # oldest first

    def take(self, separator: bytes, domain: Domain, rng: random.Random) -> SignedReading:
        """The next reading: a few Wh more, at the wall clock (strictly after the last one)."""
        self.wh += rng.randint(0, 40)
        self.timestamp = max(int(time.time()), self.timestamp + 1)
        reading = fast_sign(self.key, separator, domain, self.wh, self.timestamp)
        self.unsent.append(reading)
        return reading


@dataclass
class Lifetime:
    """RSS samples (seconds since start, kB) of one oracle process."""

    pid: int
    started: float
    samples: list[tuple[float, int]] = field(default_factory=list)

    def summary(self, warmup: float) -> dict[str, Any]:
        if not self.samples:
            return {"pid": self.pid, "samples": 0}
        rss = [kb for _, kb in self.samples]
        settled = [kb for t, kb in self.samples if t >= warmup]
        warm = settled[0] if settled else None
        growth = (settled[-1] - warm) / warm if settled and warm else None
        return {
            "pid": self.pid,
            "seconds": round(self.samples[-1][0], 1),
            "samples": len(rss),
            "first_kb": rss[0],
            "after_warmup_kb": warm,
            "last_kb": rss[-1],
            "max_kb": max(rss),
            "growth_after_warmup_pct": None if growth is None else round(100 * growth, 1),
            "flat": None if growth is None else growth < FLAT_GROWTH,
        }


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process from /proc (Linux); None once it has gone."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class OracleProcess:
    """The oracle daemon (`python -m oracle`) on a fixed port and database, killed and restarted."""

    def __init__(self, rpc_url: str, contract: str, workdir: Path, timestep: int) -> None:
        key_file = workdir / "relayer.key"
        key_file.write_text("0x" + relayer_account().key.hex() + "\n")
        key_file.chmod(0o600)
        self.port = free_port()
        self.log = workdir / "oracle.log"
        self.args = [
            sys.executable, "-m", "oracle", "--rpc-url", rpc_url, "--contract", contract,
            "--relayer-key-file", str(key_file), "--db", str(workdir / "oracle.sqlite3"),
            "--listen", f"127.0.0.1:{self.port}", "--timestep", str(timestep), "--confirmations", "0",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.lifetimes: list[Lifetime] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.lifetimes.append(Lifetime(self.proc.pid, time.monotonic()))
        wait_healthy(self.url, self.proc, self.log, timeout=120)

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signum)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def sample(self) -> None:
        proc = self.proc
        if proc is None or not self.lifetimes or self.lifetimes[-1].pid != proc.pid:
            return
        kb = rss_kb(proc.pid)
        if kb is not None:
            lifetime = self.lifetimes[-1]
            lifetime.samples.append((time.monotonic() - lifetime.started, kb))


@dataclass
class Tally:
    posted: int = 0  # distinct readings posted at least once
    post_attempts: int = 0  # readings sent, retries included
    failed_posts: int = 0  # requests without an answer (oracle down or killed mid-request)
    accepted: list[SignedReading] = field(default_factory=list)
    unanswered: set[tuple[str, int]] = field(default_factory=set)  # (meter, timestamp) sent without an answer
    stale_after_lost_answer: int = 0  # stored before the oracle died, so the retry was stale
    rejected: Counter[str] = field(default_factory=Counter)
    starting: int = 0  # readings answered 503 "starting" (a restarted oracle loading its history): sent again


async def post_group(session: aiohttp.ClientSession, url: str, meters: Sequence[SimulatedMeter], tally: Tally) -> None:
    """Post every unsent reading of `meters` in one batch; keep them all when there is no answer."""
    batch = [r for m in meters for r in m.unsent]
    if not batch:
        return
    body = json.dumps({"readings": [r.to_json() for r in batch]}).encode()
    tally.post_attempts += len(batch)
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            answer = await response.json() if response.status == 200 else None
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        answer, status = None, 0
    if answer is None:
        tally.failed_posts += 1
        tally.unanswered.update((r.meter, r.timestamp) for r in batch)
        if status == 503:
            tally.starting += len(batch)
        elif status:
            tally.rejected[f"http_{status}"] += len(batch)
        return
    for reading, result in zip(batch, answer["results"], strict=True):
        if result["status"] == "accepted":
            tally.accepted.append(reading)
        elif result["error"] == "stale" and (reading.meter, reading.timestamp) in tally.unanswered:
            tally.stale_after_lost_answer += 1
        else:
            tally.rejected[result["error"]] += 1
    for meter in meters:
        meter.unsent.clear()


@dataclass
class Faults:
    node: Anvil
    oracle: OracleProcess
    node_downtime: float
    node_restarts: int = 0
    oracle_kills: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)

    async def restart_node(self, at: float) -> None:
        await asyncio.to_thread(self.node.stop)  # SIGTERM: anvil writes its --state file
        await asyncio.sleep(self.node_downtime)
        await asyncio.to_thread(self.node.start)
        self.node_restarts += 1
        self.log.append({"at_s": round(at, 1), "fault": "node restarted"})

    async def kill_oracle(self, at: float) -> None:
        self.oracle.stop(signal.SIGKILL)
        await asyncio.to_thread(self.oracle.start)
        self.oracle_kills += 1
        self.log.append({"at_s": round(at, 1), "fault": "oracle killed"})


def schedule(seconds: float, node_restarts: int, oracle_kills: int) -> list[tuple[float, str]]:
    """Faults spread evenly over the run, node and oracle alternating."""
    kinds: list[str] = []
    for i in range(max(node_restarts, oracle_kills)):
        kinds += (["node"] if i < node_restarts else []) + (["oracle"] if i < oracle_kills else [])
    return [(seconds * (i + 1) / (len(kinds) + 1), kind) for i, kind in enumerate(kinds)]


def readings_on_chain(market: Contract) -> list[ReadingKey]:
    """Every reading of every ReadingsAccepted event (packed words: meter, cumulativeWh, timestamp)."""
    out: list[ReadingKey] = []
    for log in market.events.ReadingsAccepted().get_logs(from_block=0):
        for word in log["args"]["readings"]:
            meter = Web3.to_checksum_address((word >> 96).to_bytes(20, "big"))
            out.append((meter, (word >> 40) & (2**48 - 1), word & (2**40 - 1)))
    return out


async def queue_depth(session: aiohttp.ClientSession, url: str) -> int | None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, KeyError, ValueError):
        async with session.get(url + "/healthz") as response:
            return int((await response.json())["queueDepth"])
    return None


@dataclass(frozen=True, slots=True)
class Options:
    minutes: float
    meters: int
    interval: float
    timestep: int
    node_restarts: int
    oracle_kills: int
    node_downtime: float
    warmup: float
    seed: int
    workdir: Path


async def run_load(
    options: Options, meters: list[SimulatedMeter], domain: Domain, faults: Faults, oracle: OracleProcess
) -> tuple[Tally, float]:
    """Post readings for the run's duration while the faults happen; then flush and drain.
    Returns the tally and the seconds the drain took."""
    rng = random.Random(options.seed)
    separator = domain.separator()
    tally = Tally()
    groups = [meters[i::CLIENTS] for i in range(CLIENTS)]
    seconds = options.minutes * 60
    plan = schedule(seconds, options.node_restarts, options.oracle_kills)
    start = time.monotonic()
    url = oracle.url + "/v1/readings"

    async def inject() -> None:
        for at, kind in plan:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            elapsed = time.monotonic() - start
            await (faults.restart_node(elapsed) if kind == "node" else faults.kill_oracle(elapsed))

    async def sample_memory() -> None:
        while True:
            oracle.sample()
            await asyncio.sleep(1.0)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sampler = asyncio.create_task(sample_memory())
        injector = asyncio.create_task(inject())
        tick = start
        while time.monotonic() - start < seconds:
            for meter in meters:
                meter.take(separator, domain, rng)
                tally.posted += 1
            await asyncio.gather(*(post_group(session, url, group, tally) for group in groups))
            tick += options.interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        await injector  # a fault still under way finishes (the oracle is back up)
        drain_start = time.monotonic()
        deadline = drain_start + DRAIN_TIMEOUT
        while any(m.unsent for m in meters) and time.monotonic() < deadline:
            await asyncio.gather(*(post_group(session, url, group, tally) for group in groups))
            await asyncio.sleep(0.5)
        while time.monotonic() < deadline:
            if await queue_depth(session, oracle.url) == 0:
                break
            await asyncio.sleep(0.5)
        drain = time.monotonic() - drain_start
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return tally, drain


def soak(options: Options) -> dict[str, Any]:
    state = options.workdir / "anvil-state.json"
    node = Anvil(port=free_port(), accounts=4, extra_args=("--state", str(state)))
    oracle: OracleProcess | None = None
    try:
        node.start()
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 60}))
        registrar = w3.eth.accounts[0]
        market = deploy_market(w3, registrar)
        accounts = [Account.create() for _ in range(options.meters)]
        register_meters(market, registrar, [(a.address, registrar) for a in accounts])
        meters = [SimulatedMeter(PrivateKey(a.key), a.address) for a in accounts]
        domain = Domain(chain_id=w3.eth.chain_id, contract=market.address)
        oracle = OracleProcess(node.url, market.address, options.workdir, options.timestep)
        oracle.start()
        faults = Faults(node, oracle, options.node_downtime)
        started = time.monotonic()
        tally, drain = asyncio.run(run_load(options, meters, domain, faults, oracle))
        duration = time.monotonic() - started

        on_chain = readings_on_chain(market)
        seen = Counter(on_chain)
        last = {m.address: market.functions.meterOf(m.address).call() for m in meters}
        settled = superseded = lost = 0
        for reading in tally.accepted:
            last_wh, last_ts = last[reading.meter][3], last[reading.meter][4]
            if (reading.meter, reading.cumulative_wh, reading.timestamp) in seen:
                settled += 1
            elif reading.timestamp < last_ts or (reading.timestamp, reading.cumulative_wh) == (last_ts, last_wh):
                superseded += 1
            else:
                lost += 1
    finally:
        if oracle is not None:
            oracle.stop()
        node.stop()

    lifetimes = [lifetime.summary(options.warmup) for lifetime in oracle.lifetimes]
    flat = [life["flat"] for life in lifetimes if life.get("flat") is not None]
    return {
        "duration_s": round(duration, 1),
        "drain_s": round(drain, 1),
        "meters": options.meters,
        "interval_s": options.interval,
        "timestep_s": options.timestep,
        "readings_posted": tally.posted,
        "post_attempts": tally.post_attempts,
        "posts_without_answer": tally.failed_posts,
        "accepted": len(tally.accepted),
        "stale_after_lost_answer": tally.stale_after_lost_answer,
        "rejected": dict(tally.rejected),
        "answered_starting": tally.starting,
        "settled_on_chain": settled,
        "superseded": superseded,
        "lost": lost,
        "settled_twice": sum(1 for n in seen.values() if n > 1),
        "readings_in_events": len(on_chain),
        "node_restarts": faults.node_restarts,
        "oracle_kills": faults.oracle_kills,
        "faults": faults.log,
        "oracle_rss": lifetimes,
        "memory_flat": all(flat) if flat else None,
        "workdir": str(options.workdir),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load (default: %(default)s)")
    parser.add_argument("--meters", type=int, default=100, help="simulated meters (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings of a meter")
    parser.add_argument("--timestep", type=int, default=2, help="the oracle's --timestep (default: %(default)s)")
    parser.add_argument("--node-restarts", type=int, default=2, help="node restarts (default: %(default)s)")
    parser.add_argument("--oracle-kills", type=int, default=2, help="oracle SIGKILLs (default: %(default)s)")
    parser.add_argument("--node-downtime", type=float, default=3.0, help="seconds the node stays down")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of an oracle's life before RSS counts")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated consumption")
    parser.add_argument("--workdir", type=Path, help="keep the logs, database and chain state here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.meters < 1 or args.interval <= 0 or args.timestep <= 0:
        parser.error("--minutes, --meters, --interval and --timestep must be positive")
    if min(args.node_restarts, args.oracle_kills) < 0 or args.node_downtime < 0:
        parser.error("--node-restarts, --oracle-kills and --node-downtime must not be negative")

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="energykart-soak-")))
        workdir.mkdir(parents=True, exist_ok=True)
        options = Options(
            minutes=args.minutes,
            meters=args.meters,
            interval=args.interval,
            timestep=args.timestep,
            node_restarts=args.node_restarts,
            oracle_kills=args.oracle_kills,
            node_downtime=args.node_downtime,
            warmup=args.warmup,
            seed=args.seed,
            workdir=workdir,
        )
        report = soak(options)
        if args.workdir is None:
            report.pop("workdir")
    ok = report["lost"] == 0 and report["settled_twice"] == 0
    print(json.dumps({**report, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
