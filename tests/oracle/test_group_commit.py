"""Ingest under concurrency: the group commit answers a request only once its readings are durable,
one request that cannot be stored fails alone, clients racing with the same reading get it accepted
once, and a SIGKILL right after answers to many concurrent clients loses no accepted reading."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from oracle.readings import SignedReading, sign_reading
from oracle.store import NewReading, ReadingStore
from tests.chain import Chain
from tests.oracle.conftest import Oracle

METER = "0x" + "ab" * 20


def _new(timestamp: int, meter: str = METER) -> NewReading:
    return (meter, timestamp * 10, timestamp, bytes(65))


def _stored(path: Path) -> set[tuple[str, int]]:
    """(meter, timestamp) of every reading in the database, seen through a connection of its own."""
    with sqlite3.connect(path) as db:
        return {(meter, ts) for meter, ts in db.execute("SELECT meter, timestamp FROM readings")}


def test_each_request_is_answered_only_once_its_readings_are_committed(tmp_path: Path) -> None:
    path = tmp_path / "oracle.sqlite3"
    store = ReadingStore(path)
    requests = [[_new(100 * r + i) for i in range(5)] for r in range(100)]
    seen_at_answer: list[bool] = []

    async def post(readings: list[NewReading]) -> None:
        await store.insert_readings(readings)
        # Another connection (a process started after a crash) already sees them.
        seen_at_answer.append({(m, ts) for m, _, ts, _ in readings} <= _stored(path))

    async def concurrently() -> None:
        await asyncio.gather(*(post(readings) for readings in requests))

    asyncio.run(concurrently())
    store.close()
    assert seen_at_answer == [True] * len(requests)
    assert len(_stored(path)) == 500


def test_a_request_that_cannot_be_stored_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "oracle.sqlite3"
    store = ReadingStore(path)
    with sqlite3.connect(path) as db:  # a row the ingest did not know of: its UNIQUE key is taken
        db.execute(
            "INSERT INTO readings (meter, cumulative_wh, timestamp, signature, received_at) VALUES (?, ?, ?, ?, ?)",
            (*_new(7), 0),
        )
    good = [[_new(1000 + 10 * r + i) for i in range(3)] for r in range(20)]

    async def concurrently() -> list[BaseException | None]:
        return await asyncio.gather(
            *(store.insert_readings(readings) for readings in [*good[:10], [_new(8), _new(7)], *good[10:]]),
            return_exceptions=True,
        )

    outcomes = asyncio.run(concurrently())
    store.close()
    assert isinstance(outcomes[10], sqlite3.IntegrityError)
    assert outcomes[:10] + outcomes[11:] == [None] * 20
    stored = _stored(path)
    assert {(m, ts) for readings in good for m, _, ts, _ in readings} <= stored
    assert (METER, 8) not in stored  # the failed request's transaction left nothing behind


def _meters(chain: Chain, count: int) -> list[LocalAccount]:
    return [chain.new_meter(chain.accounts[7]) for _ in range(count)]


def test_clients_racing_with_the_same_reading_get_it_accepted_once(
    chain: Chain, start_oracle: Callable[..., Oracle]
) -> None:
    """Five clients post each reading at the same time, and older ones race newer ones: per
    meter, each timestamp is accepted at most once, and accepted timestamps only grow."""
    meters = _meters(chain, 8)
    oracle = start_oracle(chain)
    start = chain.now() - 100
    readings = [sign_reading(m.key, chain.domain, 10 * k, start + k) for k in range(1, 21) for m in meters]
    posts = [r for r in readings for _ in range(5)]
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda r: (r, *oracle.post(r.to_json())), posts))
    assert {status for _, status, _ in answers} <= {202, 409}, [a for a in answers if a[1] not in (202, 409)]
    accepted = Counter((r.meter, r.timestamp) for r, status, _ in answers if status == 202)
    assert accepted
    assert max(accepted.values()) == 1
    for meter in meters:
        newest = max(ts for m, ts in accepted if m == meter.address)
        assert oracle.meter(meter.address)["lastAccepted"]["timestamp"] == newest
    assert _stored(oracle.workdir / "oracle.sqlite3") == set(accepted)


@pytest.mark.parametrize("batch_size", [1, 10])
def test_sigkill_right_after_answers_to_concurrent_clients_loses_no_accepted_reading(
    chain: Chain, start_oracle: Callable[..., Oracle], batch_size: int
) -> None:
    """Thirty clients, each a meter posting its readings one request at a time; the oracle is
    killed with SIGKILL the moment enough answers are in, while other requests are being checked
    or committed. Every reading answered as accepted is in the database afterwards."""
    meters = _meters(chain, 30)
    oracle = start_oracle(chain)
    assert oracle.proc is not None
    pid = oracle.proc.pid
    start = chain.now() - 1000
    accepted: list[SignedReading] = []
    unexpected: list[object] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(meter: LocalAccount) -> None:
        readings = [sign_reading(meter.key, chain.domain, 10 * k, start + k) for k in range(1, 301)]
        try:
            for i in range(0, len(readings), batch_size):
                batch = readings[i : i + batch_size]
                status, body = oracle.post_readings(batch)
                if status != 200:
                    unexpected.append(body)
                    return
                with lock:
                    accepted.extend(
                        r for r, result in zip(batch, body["results"], strict=True) if result["status"] == "accepted"
                    )
                    if len(accepted) >= 600:
                        enough.set()
        except (OSError, http.client.HTTPException):
            pass  # killed under us

    threads = [threading.Thread(target=client, args=(m,)) for m in meters]
    for thread in threads:
        thread.start()
    assert enough.wait(timeout=120), "the clients got too few answers"
    os.killpg(pid, signal.SIGKILL)
    for thread in threads:
        thread.join()
    oracle.proc.wait()
    assert not unexpected
    with lock:
        answered = list(accepted)
    assert len(answered) < 30 * 300  # the kill landed while readings were still posted
    stored = _stored(oracle.workdir / "oracle.sqlite3")
    assert {(r.meter, r.timestamp) for r in answered} <= stored

    oracle.start()  # and the restarted oracle refuses them as already accepted
    newest = {r.meter: r for r in sorted(answered, key=lambda r: r.timestamp)}
    for reading in newest.values():
        assert oracle.post(reading.to_json())[0] == 409
