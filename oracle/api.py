"""The oracle's HTTP API (aiohttp). Documented in docs/ORACLE.md.

The server listens from the start, before the market's history is loaded: `/healthz` and
`/metrics` answer at once (status "starting"), the other routes answer 503 until `ApiContext.running`
is set. Every error is the documented JSON, unknown routes and methods included, and each refused
request is logged as a throttled warning (one line per cause per minute).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from eth_utils.address import is_address, to_checksum_address
from prometheus_client import CONTENT_TYPE_LATEST

from oracle.ingest import Accepted, Ingest, Rejection
from oracle.metrics import Metrics
from oracle.registry import ChainView
from oracle.relayer import WaitingSettle
from oracle.store import ReadingStore
from oracle.throttle import ThrottledWarnings

type TickFunction = Callable[[], Awaitable[dict[str, Any]]]
_LOGGER = logging.getLogger(__name__)
RETRY_AFTER_STARTING = "5"  # seconds, in the Retry-After of a 503 while the oracle starts


@dataclass(frozen=True, slots=True)
class Running:
    """What the API serves once the market's history is loaded."""

    ingest: Ingest
    view: ChainView
    waiting_settle: Callable[[], WaitingSettle | None]


@dataclass(slots=True)
class ApiContext:
    store: ReadingStore
    metrics: Metrics
    max_body: int
    identity: dict[str, Any]  # chain id, contract, relayer address: shown by /healthz
    tick: TickFunction | None  # POST /v1/admin/tick, only in --dev mode
    rejections: ThrottledWarnings = field(default_factory=lambda: ThrottledWarnings(_LOGGER))
    running: Running | None = None  # None while the oracle starts


_CONTEXT = web.AppKey("context", ApiContext)
_ERROR_CODE = "energykart_error"  # the response's error code, for the log of refused requests


def _error(status: int, error: str, detail: str) -> web.Response:
    response = web.json_response({"error": error, "detail": detail}, status=status)
    response[_ERROR_CODE] = error
    return response


def _starting() -> web.Response:
    response = _error(503, "starting", "the oracle is loading the market's history; retry shortly")
    response.headers["Retry-After"] = RETRY_AFTER_STARTING
    return response


type Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes and methods in the documented JSON; a throttled warning per refused request."""
    try:
        response = await handler(request)
    except web.HTTPMethodNotAllowed as err:
        allowed = ", ".join(sorted(err.allowed_methods))
        response = _error(405, "method_not_allowed", f"{request.path} takes {allowed}, not {request.method}")
        response.headers["Allow"] = allowed
    except web.HTTPNotFound:
        response = _error(404, "not_found", f"no such route: {request.path} (see docs/ORACLE.md)")
    code = response.get(_ERROR_CODE)
    if code is not None and code != "starting":
        request.app[_CONTEXT].rejections.warn(
            code, "rejected request %s %s from %s: %s", request.method, request.path, request.remote, code
        )
    return response


def _refuse(ctx: ApiContext, status: int, error: str, detail: str) -> web.Response:
    """A request refused as a whole, before any reading is looked at (counted as one rejection)."""
    ctx.metrics.readings_rejected.labels(error).inc()
    return _error(status, error, detail)


def _too_large(ctx: ApiContext) -> web.Response:
    return _refuse(ctx, 413, "too_large", f"request body exceeds {ctx.max_body} bytes; send smaller batches")


async def post_readings(request: web.Request) -> web.Response:
    ctx = request.app[_CONTEXT]
    if ctx.running is None:
        return _starting()
    ingest = ctx.running.ingest
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
        outcomes = await ingest.submit(items)
        results: list[dict[str, Any]] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Accepted):
                results.append({"index": index, "status": "accepted"})
            else:
                results.append({"index": index, "status": "rejected", "error": outcome.error, "detail": outcome.detail})
        accepted = sum(isinstance(o, Accepted) for o in outcomes)
        for error in sorted({o.error for o in outcomes if isinstance(o, Rejection)}):
            ctx.rejections.warn(f"reading:{error}", "rejected reading(s) in a batch from %s: %s", request.remote, error)
        return web.json_response({"accepted": accepted, "rejected": len(outcomes) - accepted, "results": results})
    (outcome,) = await ingest.submit([data])
    if isinstance(outcome, Rejection):
        return _error(outcome.status, outcome.error, outcome.detail)
    return web.json_response({"status": "accepted", "meter": outcome.meter, "timestamp": outcome.timestamp}, status=202)


def _pair(value: tuple[int, int] | None) -> dict[str, int] | None:
    return None if value is None else {"cumulativeWh": value[0], "timestamp": value[1]}


async def get_meter(request: web.Request) -> web.Response:
    ctx = request.app[_CONTEXT]
    if ctx.running is None:
        return _starting()
    text = request.match_info["address"]
    if not is_address(text) or not text.startswith("0x"):
        return _error(400, "invalid_address", "give the meter's 0x-prefixed address")
    meter = to_checksum_address(text)
    summary = ctx.store.meter_summary(meter)
    return web.json_response(
        {
            "meter": meter,
            "registered": meter in ctx.running.view.registered,
            "lastAccepted": _pair(summary.last_accepted),
            "lastSettled": _pair(summary.last_settled),
            "pending": summary.pending,
        }
    )


def settlement_lag(oldest_accepted: int | None) -> float | None:
    """Seconds since the oracle accepted the oldest reading still waiting; None when nothing waits."""
    return None if oldest_accepted is None else float(max(0, int(time.time()) - oldest_accepted))


def _update_gauges(ctx: ApiContext) -> tuple[int, float | None]:
    depth, oldest = ctx.store.queue()
    lag = settlement_lag(oldest)
    ctx.metrics.queue_depth.set(depth)
    ctx.metrics.settlement_lag.set(lag or 0)
    ctx.metrics.db_bytes.set(ctx.store.size_bytes())
    return depth, lag


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[_CONTEXT]
    depth, lag = _update_gauges(ctx)
    running = ctx.running
    if running is None:
        return web.json_response({"status": "starting", "queueDepth": depth, **ctx.identity}, status=503)
    view = running.view
    waiting = running.waiting_settle()
    body = {
        "status": "ok" if view.chain_up else "node_unreachable",
        "chain": view.chain_up,
        "headBlock": view.head_block,
        "headTimestamp": view.head_timestamp,
        "queueDepth": depth,
        "settlementLagSeconds": lag,
        "settleWaiting": None if waiting is None else waiting.to_json(),
        "meters": len(view.registered),
        **ctx.identity,
    }
    return web.json_response(body, status=200 if view.chain_up else 503)


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[_CONTEXT]
    _update_gauges(ctx)
    return web.Response(body=ctx.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def admin_tick(request: web.Request) -> web.Response:
    ctx = request.app[_CONTEXT]
    assert ctx.tick is not None  # the route exists only in --dev mode
    if ctx.running is None:
        return _starting()
    return web.json_response(await ctx.tick())


def build_app(ctx: ApiContext) -> web.Application:
    # request.read() refuses a body of client_max_size bytes or more (also a chunked one): one byte
    # over --max-body, so a body of exactly --max-body bytes is accepted as documented.
    app = web.Application(client_max_size=ctx.max_body + 1, middlewares=[_json_errors])
    app[_CONTEXT] = ctx
    app.router.add_post("/v1/readings", post_readings)
    app.router.add_get("/v1/meters/{address}", get_meter)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if ctx.tick is not None:
        app.router.add_post("/v1/admin/tick", admin_tick)
    return app
