"""Delivering signed readings to an oracle's `POST /v1/readings` (docs/ORACLE.md).

The sender knows nothing of sources or keys: it posts a batch and says, per reading, what the
oracle made of it. Transport failures and 5xx answers raise `OracleUnreachable` (retry later).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from oracle.readings import SignedReading

_LOGGER = logging.getLogger(__name__)

MAX_BATCH = 500  # readings per POST

# What to do about a refusal, by the oracle's error code (see oracle/ingest.py).
_HINTS = {
    "unknown_meter": "register this meter's address on the market (the registrar does), "
    "or check that --contract names the oracle's market",
    "bad_signature": "check --chain-id and --contract: they must be the oracle's market (GET /healthz shows them)",
    "out_of_range": "the reading does not fit the contract's ranges: check the source's unit",
    "invalid_reading": "check the gateway's clock and --chain-id / --contract",
}


class OracleUnreachable(Exception):
    """The oracle did not answer, or answered 5xx / 429: the readings stay queued."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The oracle refused a reading for good: `error` is its code, `detail` its explanation."""

    error: str
    detail: str

    @property
    def hint(self) -> str:
        return _HINTS.get(self.error, "see the oracle's log")


type Outcome = Literal["accepted", "stale"] | Refused


class Sender:
    """Posts batches of readings to one oracle through an injected aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, oracle_url: str) -> None:
        self.session = session
        self.oracle_url = oracle_url.rstrip("/")

    async def post(self, batch: Sequence[SignedReading]) -> list[Outcome] | Literal["too_large"]:
        """POST one batch; the oracle's verdict per reading, or "too_large" on 413."""
        body: dict[str, Any] = batch[0].to_json() if len(batch) == 1 else {"readings": [r.to_json() for r in batch]}
        try:
            async with self.session.post(self.oracle_url + "/v1/readings", json=body) as response:
                if response.status == 413:
                    return "too_large"
                if response.status >= 500 or response.status in (404, 405, 408, 429):
                    raise OracleUnreachable(f"HTTP {response.status} {response.reason or ''}".strip())
                answer = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as err:
            raise OracleUnreachable(str(err) or type(err).__name__) from err
        if len(batch) == 1:
            return [_outcome(status, answer)]
        results = answer.get("results", []) if isinstance(answer, dict) else []
        by_index = {item.get("index"): item for item in results if isinstance(item, dict)}
        return [
            _outcome(200 if by_index.get(i, {}).get("status") == "accepted" else 400, by_index.get(i, {}))
            for i in range(len(batch))
        ]


def _outcome(status: int, answer: Any) -> Outcome:
    error = answer.get("error") if isinstance(answer, dict) else None
    if status in (200, 202) and error is None:
        return "accepted"
    if status == 409 or error == "stale":
        return "stale"
    detail = answer.get("detail", answer) if isinstance(answer, dict) else answer
    return Refused(str(error or status), str(detail))
