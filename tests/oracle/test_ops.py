"""The oracle as an operator meets it: first run on an automining chain, clear start-up errors
(exit 2), throttled warnings for misbehaving clients, JSON 404/405, lifecycle log lines, /healthz
while starting, settlement lag from acceptance, fee replacement of a stuck settle, retention,
the database size metric."""

from __future__ import annotations

import logging
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.types import RPCEndpoint

from devchain.anvil import Anvil, free_port
from devchain.deploy import deploy_market_at
from oracle.readings import Domain, sign_reading
from oracle.store import ReadingStore
from oracle.throttle import ThrottledWarnings
from tests.chain import Chain
from tests.oracle.conftest import GRACE, REPO_ROOT, Oracle, funded_account, http, wait_for

# A contract that answers every call with one zero byte: nothing decodes.
UNDECODABLE_INIT_CODE = "0x6460016000f36000526005601bf3"


def _oracle_args(rpc_url: str, contract: str, workdir: Path, *extra: str) -> list[str]:
    key = workdir / "relayer.key"
    key.write_text(Account.create().key.hex())
    key.chmod(0o600)
    return [
        sys.executable, "-m", "oracle", "--rpc-url", rpc_url, "--contract", contract,
        "--relayer-key-file", str(key), "--db", str(workdir / "oracle.sqlite3"), *extra,
    ]  # fmt: skip


def _exit_lines(runs: list[list[str]]) -> list[str]:
    """Run the oracles side by side; each must exit 2 with one error line and no traceback."""
    procs = [subprocess.Popen(args, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True) for args in runs]
    lines = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2, stderr
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("energykart-oracle: error:")]
        assert len(errors) == 1, stderr
        lines.append(errors[0])
    return lines


def test_startup_errors_exit_2_with_the_flag_to_fix(chain: Chain, tmp_path: Path) -> None:
    rpc = chain.w3.provider.endpoint_uri  # type: ignore[attr-defined]
    contract = chain.market.address
    receipt = chain.w3.eth.wait_for_transaction_receipt(
        chain.w3.eth.send_transaction({"from": chain.accounts[0], "data": UNDECODABLE_INIT_CODE})  # type: ignore[typeddict-item]
    )
    missing = tmp_path / "no" / "such" / "folder"
    for name in ("port", "db", "contract"):
        (tmp_path / name).mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        port_in_use, no_folder, not_a_market = _exit_lines(
            [
                _oracle_args(rpc, contract, tmp_path / "port", "--listen", f"127.0.0.1:{port}"),
                [
                    *_oracle_args(rpc, contract, tmp_path / "db", "--listen", "127.0.0.1:0"),
                    "--db",
                    str(missing / "o.db"),
                ],
                _oracle_args(rpc, str(receipt["contractAddress"]), tmp_path / "contract", "--listen", "127.0.0.1:0"),
            ]
        )
    assert f"--listen: cannot listen on 127.0.0.1:{port}" in port_in_use
    assert f"--db: the folder {missing} of" in no_folder
    assert "--contract:" in not_a_market
    assert "not an EnergyMarket" in not_a_market


def test_healthz_answers_starting_until_the_node_answers(tmp_path: Path) -> None:
    """With no node yet, the oracle already listens: /healthz says "starting", other routes 503."""
    port = free_port()
    args = _oracle_args(f"http://127.0.0.1:{free_port()}", "0x5FbDB2315678afecb367f032d93F642f64180aa3", tmp_path)
    proc = subprocess.Popen([*args, "--listen", f"127.0.0.1:{port}"], cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url + "/healthz"), "the oracle to listen")
        status, body = http("GET", url + "/healthz")
        assert (status, body["status"]) == (503, "starting")
        assert http("POST", url + "/v1/readings", {})[1]["error"] == "starting"
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def _answers(url: str) -> bool:
    try:
        http("GET", url, timeout=2)
    except OSError:
        return False
    return True


def _send_raw_request(port: int, head: bytes, body: bytes, close_early: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        if close_early:
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_misbehaving_clients_get_json_and_one_warning_per_cause(
    chain: Chain, start_oracle: Callable[..., Oracle]
) -> None:
    oracle = start_oracle(chain)
    status, body = http("GET", oracle.url + "/v2/nothing")
    assert (status, body["error"]) == (404, "not_found")
    status, body = http("DELETE", oracle.url + "/v1/readings")
    assert (status, body["error"]) == (405, "method_not_allowed")
    assert "POST" in body["detail"]

    not_gzip = b"this is not gzip at all" * 10
    head = (
        b"POST /v1/readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(not_gzip)
    )
    for _ in range(40):
        answer = _send_raw_request(oracle.port, head, not_gzip)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    dropped = (
        b"POST /v1/readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    for _ in range(40):
        _send_raw_request(oracle.port, dropped, b'{"readings": [', close_early=True)
    for _ in range(10):
        assert oracle.post(b"not json")[0] == 400
    assert http("GET", oracle.url + "/healthz")[0] == 200  # still serving

    oracle.stop()
    log = oracle.log.read_text()
    assert "Traceback" not in log
    assert " ERROR " not in log
    warnings = [line for line in log.splitlines() if " WARNING " in line and "rejected" in line]
    causes = [line.rsplit("(", 1)[-1] for line in warnings]
    assert len(warnings) <= 6, warnings  # not_found, method_not_allowed, invalid_json, and the transport's own
    assert len(set(causes)) == len(causes), warnings
    assert any("invalid_json" in line for line in warnings)


def test_first_run_settles_and_logs_its_lifecycle(w3: Web3, start_oracle: Callable[..., Oracle]) -> None:
    """Default --confirmations 1 on an automining anvil: the oracle notices and settles anyway,
    without --dev ticks, and logs start, ready, a meter registered while running, and shutdown."""
    accounts = list(w3.eth.accounts)
    market, block = deploy_market_at(w3, accounts[0], timestep=GRACE)
    chain = Chain(w3, market, accounts[0], accounts, Domain(w3.eth.chain_id, market.address))
    oracle = start_oracle(chain, "--timestep", "2", "--start-block", str(block))
    assert oracle.health()[1]["status"] == "ok"

    meter = chain.new_meter(accounts[3])
    wait_for(lambda: oracle.meter(meter.address)["registered"], "the oracle to see the new meter")
    # A back-filled reading a day old: the lag counts from acceptance, not from the meter's clock.
    old = chain.now() - 86_400
    assert oracle.post(chain.sign(meter, 100, old).to_json())[0] == 202
    lag = oracle.health()[1]["settlementLagSeconds"]
    assert lag is not None
    assert lag < 3600
    wait_for(lambda: oracle.meter(meter.address)["lastSettled"] is not None, "the first settle")
    status, text = http("GET", oracle.url + "/metrics")
    sizes = [line for line in str(text).splitlines() if line.startswith("energykart_oracle_db_bytes ")]
    assert status == 200
    assert len(sizes) == 1
    assert float(sizes[0].split()[1]) > 0

    assert oracle.proc is not None
    proc = oracle.proc
    oracle.stop()
    assert proc.returncode == 0
    log = oracle.log.read_text()
    for expected in (
        "oracle.service: starting:",
        "listening on http://127.0.0.1:",
        f"history from block {block} to",
        "(automine)",
        f"meter {meter.address} registered",
        "ready: chain",
        "shutting down (SIGTERM)",
        "oracle: stopped",
    ):
        assert expected in log, expected


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_throttled_warnings_hold_back_repeats_for_a_minute() -> None:
    collect = _Collect()
    logger = logging.getLogger("tests.throttle")
    logger.addHandler(collect)
    logger.propagate = False
    now = [0.0]
    warnings = ThrottledWarnings(logger, every=60, clock=lambda: now[0])
    for _ in range(5):
        warnings.warn("stale", "rejected: stale")
    warnings.warn("bad_signature", "rejected: bad_signature")
    now[0] = 59.0
    warnings.warn("stale", "rejected: stale")
    now[0] = 60.0
    warnings.warn("stale", "rejected: stale")
    assert collect.lines == [
        "rejected: stale",
        "rejected: bad_signature",
        "rejected: stale (5 more like it since the last report)",
    ]


# ---------------------------------------------------------------- a chain that mines on request


@pytest.fixture
def manual_node() -> Iterator[Anvil]:
    """An anvil of its own whose automine is switched off after the market is set up."""
    with Anvil(accounts=3) as node:
        yield node


def _rpc(w3: Web3, method: str, *params: Any) -> Any:
    return w3.provider.make_request(RPCEndpoint(method), list(params))


def test_stuck_settle_is_replaced_and_confirmation_wait_is_reported(manual_node: Anvil, tmp_path: Path) -> None:
    w3 = Web3(Web3.HTTPProvider(manual_node.url))
    accounts = list(w3.eth.accounts)
    market, block = deploy_market_at(w3, accounts[0], timestep=GRACE)
    chain = Chain(w3, market, accounts[0], accounts, Domain(w3.eth.chain_id, market.address))
    meter = chain.new_meter(accounts[1])
    relayer = funded_account(chain)
    _rpc(w3, "evm_setAutomine", False)
    oracle = Oracle(manual_node.url, market.address, tmp_path, relayer)
    oracle.extra = ("--timestep", "1", "--confirmations", "2", "--replace-after", "1", "--start-block", str(block))
    oracle.start()
    try:
        reading = sign_reading(meter.key, chain.domain, 500, chain.now() - 10)
        assert oracle.post(reading.to_json())[0] == 202
        wait_for(lambda: "replaced by" in oracle.log.read_text(), "a replacement with a higher fee")
        _rpc(w3, "evm_mine")
        (mined_hash,) = w3.eth.get_block("latest")["transactions"]
        mined = w3.eth.get_transaction(mined_hash)  # type: ignore[arg-type]
        first = _first_settle_fee(oracle.log.read_text())
        assert mined["to"] == market.address
        assert mined["maxFeePerGas"] > first

        def reported() -> bool:
            waiting = oracle.health()[1]["settleWaiting"]
            return waiting is not None and waiting["waitingFor"] == "confirmations" and waiting["rounds"] >= 3

        wait_for(reported, "/healthz to report the settle waiting for confirmations")
        assert "has waited 3 rounds: mined, waiting for 2 confirmation(s)" in oracle.log.read_text()
        _rpc(w3, "evm_mine")
        _rpc(w3, "evm_mine")
        wait_for(lambda: oracle.meter(meter.address)["lastSettled"] is not None, "the settle to be confirmed")
        wait_for(lambda: oracle.health()[1]["settleWaiting"] is None, "/healthz to clear the report")
    finally:
        oracle.stop()


def _first_settle_fee(log: str) -> int:
    """The max fee of the first settle transaction, from the replacement's log line."""
    for line in log.splitlines():
        if "replaced by" in line:
            return int(line.split("max fee ")[1].split(" ->")[0])
    raise AssertionError("no replacement logged")


# ---------------------------------------------------------------- retention


def test_retention_keeps_the_database_bounded(tmp_path: Path) -> None:
    """Ten 'days' of 5,000 settled readings each, pruned to a two-day retention after each day:
    the row count stays at most three days' worth, the file stops growing once the freed pages
    are reused, and each meter's newest reading and every waiting one survive."""
    store = ReadingStore(tmp_path / "oracle.sqlite3")
    meters = [Account.create().address for _ in range(200)]
    day, per_day, retention = 86_400, 5_000, 2 * 86_400
    sig = bytes(65)
    sizes = []
    db = sqlite3.connect(tmp_path / "oracle.sqlite3")
    for d in range(10):
        rows = [
            (meters[i % len(meters)], d * per_day + i, d * per_day + i + 1, sig, "settled", d * day)
            for i in range(per_day)
        ]
        with db:
            db.executemany(
                "INSERT INTO readings (meter, cumulative_wh, timestamp, signature, status, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        if d == 0:
            with db:
                db.execute("UPDATE readings SET status = 'pending' WHERE id = 1")
        now = d * day + 1
        while store.prune(now - retention, limit=1000) == 1000:
            pass
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes.append(store.size_bytes())
    (count,) = db.execute("SELECT COUNT(*) FROM readings").fetchone()
    assert count <= 3 * per_day + 1
    assert db.execute("SELECT status FROM readings WHERE id = 1").fetchone() == ("pending",)
    newest = db.execute("SELECT COUNT(DISTINCT meter) FROM readings WHERE received_at = ?", (9 * day,)).fetchone()
    assert newest == (len(meters),)
    assert sizes[-1] <= sizes[3] * 1.1, sizes
    db.close()
    store.close()
