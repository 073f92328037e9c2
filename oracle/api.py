"""The oracle's HTTP API (aiohttp). Documented in docs/ORACLE.md."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from eth_utils.address import is_address, to_checksum_address
from prometheus_client import CONTENT_TYPE_LATEST

from oracle.ingest import Accepted, Ingest, Rejection
from oracle.metrics import Metrics
from oracle.registry import ChainView
from oracle.store import ReadingStore

type TickFunction = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class ApiContext:
    ingest: Ingest
    store: ReadingStore
    view: ChainView
    metrics: Metrics
    max_body: int
    identity: dict[str, Any]  # chain id, contract, relayer address: shown by /healthz
    tick: TickFunction | None  # POST /v1/admin/tick, only in --dev mode


_CONTEXT = web.AppKey("context", ApiContext)


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def _refuse(ctx: ApiContext, status: int, error: str, detail: str) -> web.Response:
    """A request refused as a whole, before any reading is looked at (counted as one rejection)."""
    ctx.metrics.readings_rejected.labels(error).inc()
    return _error(status, error, detail)


def _too_large(ctx: ApiContext) -> web.Response:
    return _refuse(ctx, 413, "too_large", f"request body exceeds {ctx.max_body} bytes; send smaller batches")


async def post_readings(request: web.Request) -> web.Response:
    ctx = request.app[_CONTEXT]
    if request.content_length is not None and request.content_length > ctx.max_body:
        return _too_large(ctx)
    try:
        body = await request.read()  # bounded by client_max_size for chunked bodies
    except web.HTTPRequestEntityTooLarge:
        return _too_large(ctx)
    except web.RequestPayloadError as err:  # e.g. Content-Encoding: gzip over bytes that are not gzip
        cause = err.__cause__
        reason = cause.message if isinstance(cause, HttpProcessingError) else str(err)
        return _refuse(ctx, 400, "invalid_json", f"body cannot be decoded: {reason}")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        return _refuse(ctx, 400, "invalid_json", f"body is not JSON: {err}")
    except RecursionError:  # json's C decoder recurses once per level; 1 MiB of '[' nests far deeper
        return _refuse(
            ctx, 400, "invalid_json", "body is not JSON the oracle can decode: arrays or objects nest too deeply"
        )
    if isinstance(data, dict) and "readings" in data:
        items = data["readings"]
        if set(data) != {"readings"} or not isinstance(items, list):
            return _refuse(ctx, 400, "invalid_reading", 'a batch is {"readings": [reading, ...]} and nothing else')
        outcomes = ctx.ingest.submit(items)
        results: list[dict[str, Any]] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Accepted):
                results.append({"index": index, "status": "accepted"})
            else:
                results.append({"index": index, "status": "rejected", "error": outcome.error, "detail": outcome.detail})
        accepted = sum(isinstance(o, Accepted) for o in outcomes)
        return web.json_response({"accepted": accepted, "rejected": len(outcomes) - accepted, "results": results})
    (outcome,) = ctx.ingest.submit([data])
    if isinstance(outcome, Rejection):
        return _error(outcome.status, outcome.error, outcome.detail)
    return web.json_response({"status": "accepted", "meter": outcome.meter, "timestamp": outcome.timestamp}, status=202)


def _pair(value: tuple[int, int] | None) -> dict[str, int] | None:
    return None if value is None else {"cumulativeWh": value[0], "timestamp": value[1]}


async def get_meter(request: web.Request) -> web.Response:
    ctx = request.app[_CONTEXT]
    text = request.match_info["address"]
    if not is_address(text) or not text.startswith("0x"):
        return _error(400, "invalid_address", "give the meter's 0x-prefixed address")
    meter = to_checksum_address(text)
    summary = ctx.store.meter_summary(meter)
    return web.json_response(
        {
            "meter": meter,
            "registered": meter in ctx.view.registered,
            "lastAccepted": _pair(summary.last_accepted),
            "lastSettled": _pair(summary.last_settled),
            "pending": summary.pending,
        }
    )


def settlement_lag(oldest_waiting: int | None) -> float | None:
    """Seconds since the oldest reading still waiting was taken; None when nothing waits."""
    return None if oldest_waiting is None else float(max(0, int(time.time()) - oldest_waiting))


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[_CONTEXT]
    depth, oldest = ctx.store.queue()
    lag = settlement_lag(oldest)
    ctx.metrics.queue_depth.set(depth)
    ctx.metrics.settlement_lag.set(lag or 0)
    body = {
        "chain": ctx.view.chain_up,
        "headBlock": ctx.view.head_block,
        "headTimestamp": ctx.view.head_timestamp,
        "queueDepth": depth,
        "settlementLagSeconds": lag,
        "meters": len(ctx.view.registered),
        **ctx.identity,
    }
    return web.json_response(body, status=200 if ctx.view.chain_up else 503)


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[_CONTEXT]
    depth, oldest = ctx.store.queue()
    ctx.metrics.queue_depth.set(depth)
    ctx.metrics.settlement_lag.set(settlement_lag(oldest) or 0)
    return web.Response(body=ctx.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def admin_tick(request: web.Request) -> web.Response:
    tick = request.app[_CONTEXT].tick
    assert tick is not None  # the route exists only in --dev mode
    return web.json_response(await tick())


def build_app(ctx: ApiContext) -> web.Application:
    # request.read() refuses a body of client_max_size bytes or more (also a chunked one): one byte
    # over --max-body, so a body of exactly --max-body bytes is accepted as documented.
    app = web.Application(client_max_size=ctx.max_body + 1)
    app[_CONTEXT] = ctx
    app.router.add_post("/v1/readings", post_readings)
    app.router.add_get("/v1/meters/{address}", get_meter)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if ctx.tick is not None:
        app.router.add_post("/v1/admin/tick", admin_tick)
    return app
