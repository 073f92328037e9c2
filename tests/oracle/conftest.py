"""Oracle tests: a market on a real anvil node, and real oracle processes (`python -m oracle`)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import Wei

from devchain.anvil import Anvil, free_port
from devchain.deploy import deploy_market
from oracle.readings import Domain, SignedReading
from tests.chain import Chain

REPO_ROOT = Path(__file__).resolve().parents[2]
GRACE = 60  # the test market's timestep: grace window after a close


def http(method: str, url: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
    """One request; returns (status, decoded JSON body, or text when not JSON)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@dataclass
class Oracle:
    """An oracle daemon in its own process; `stop` (SIGTERM) or `kill` (SIGKILL), then `start` again."""

    rpc_url: str
    contract: str
    workdir: Path
    relayer: LocalAccount
    extra: tuple[str, ...] = ("--dev", "--timestep", "3600", "--confirmations", "0")
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "oracle.log"

    def start(self, timeout: float = 60) -> Oracle:
        key_file = self.workdir / "relayer.key"
        key_file.write_text(self.relayer.key.hex())
        key_file.chmod(0o600)
        args = [
            sys.executable, "-m", "oracle", "--rpc-url", self.rpc_url, "--contract", self.contract,
            "--relayer-key-file", str(key_file), "--db", str(self.workdir / "oracle.sqlite3"),
            "--listen", f"127.0.0.1:{self.port}", "--log-level", "DEBUG", *self.extra,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"oracle exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if http("GET", self.url + "/healthz", timeout=2)[0] == 200:
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"oracle not healthy:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signum)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def post(self, body: Any) -> tuple[int, Any]:
        return http("POST", self.url + "/v1/readings", body)

    def post_readings(self, readings: list[SignedReading]) -> tuple[int, Any]:
        return self.post({"readings": [r.to_json() for r in readings]})

    def tick(self) -> dict[str, Any]:
        status, body = http("POST", self.url + "/v1/admin/tick", b"")
        assert status == 200, body
        return dict(body)

    def meter(self, address: str) -> dict[str, Any]:
        status, body = http("GET", self.url + f"/v1/meters/{address}")
        assert status == 200, body
        return dict(body)

    def metric(self, name: str) -> float:
        """The value of one sample of the oracle's /metrics, e.g. 'x_total{a="b"}'; 0 when absent."""
        status, text = http("GET", self.url + "/metrics")
        assert status == 200
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = http("GET", self.url + "/healthz")
        return status, dict(body)

    def sync(self, chain: Chain) -> None:
        """Wait until the oracle has seen the chain's latest block (it polls every 2 s)."""
        head = chain.w3.eth.block_number
        wait_for(lambda: self.health()[1]["headBlock"] >= head, "oracle to see the head block")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def make_chain(w3: Web3) -> Chain:
    accounts = list(w3.eth.accounts)
    market = deploy_market(w3, accounts[0], timestep=GRACE, min_bid_increment=10**9)
    return Chain(
        w3=w3,
        market=market,
        registrar=accounts[0],
        accounts=accounts,
        domain=Domain(chain_id=w3.eth.chain_id, contract=market.address),
    )


def funded_account(chain: Chain) -> LocalAccount:
    """A fresh relayer key with 10 ETH, so no oracle shares a nonce sequence with a test."""
    account: LocalAccount = Account.create()
    tx = chain.w3.eth.send_transaction({"from": chain.accounts[0], "to": account.address, "value": Wei(10 * 10**18)})
    chain.w3.eth.wait_for_transaction_receipt(tx)
    return account


def accepted_on_chain(chain: Chain) -> list[tuple[str, int, int]]:
    """Every reading in every ReadingsAccepted event of the market, as (meter, cumulativeWh, timestamp)."""
    logs = chain.market.events.ReadingsAccepted().get_logs(from_block=0)
    out: list[tuple[str, int, int]] = []
    for log in logs:
        for word in log["args"]["readings"]:
            meter = Web3.to_checksum_address((word >> 96).to_bytes(20, "big"))
            out.append((meter, (word >> 40) & (2**48 - 1), word & (2**40 - 1)))
    return out


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))


@pytest.fixture
def chain(w3: Web3) -> Chain:
    return make_chain(w3)


@pytest.fixture
def start_oracle(tmp_path: Path) -> Iterator[Callable[..., Oracle]]:
    """Start oracles against a chain; every one is stopped when the test ends."""
    started: list[Oracle] = []

    def start(chain: Chain, *extra: str, name: str = "oracle", rpc_url: str | None = None) -> Oracle:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        oracle = Oracle(rpc_url or chain.w3.provider.endpoint_uri, chain.market.address, workdir, funded_account(chain))  # type: ignore[attr-defined]
        if extra:
            oracle.extra = extra
        started.append(oracle)
        return oracle.start()

    yield start
    for oracle in started:
        oracle.stop()
