"""The gateway's state file: the last signed reading and the readings not yet delivered.

With it a restart neither signs a reading again nor goes below what an oracle may already have.
The file never holds the key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address

from oracle.meter.errors import ConfigError
from oracle.readings import SignedReading

STATE_VERSION = 1


def reading_from_json(data: Any) -> SignedReading:
    """Parse a reading in the API's JSON shape (as written by `SignedReading.to_json`)."""
    try:
        signature = bytes.fromhex(str(data["signature"]).removeprefix("0x"))
        meter = to_checksum_address(str(data["meter"]))
        cumulative_wh, timestamp = data["cumulativeWh"], data["timestamp"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a signed reading: {err}") from err
    if len(signature) != 65 or not isinstance(cumulative_wh, int) or not isinstance(timestamp, int):
        raise ValueError("not a signed reading: bad signature length or non-integer fields")
    return SignedReading(meter, cumulative_wh, timestamp, signature[64], signature[:32], signature[32:64])


@dataclass(frozen=True, slots=True)
class MeterState:
    """Where a meter is: the cumulative energy of its last signed reading (milli-Wh, so the
    simulator loses no fraction between readings), that reading's timestamp, the simulator's clock
    (None for a real meter), and the readings not yet delivered."""

    meter: ChecksumAddress
    cumulative_mwh: int
    timestamp: int | None = None
    sim_time: float | None = None
    unsent: tuple[SignedReading, ...] = ()

    @property
    def cumulative_wh(self) -> int:
        return self.cumulative_mwh // 1000

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "meter": self.meter,
            "cumulativeMilliWh": self.cumulative_mwh,
            "timestamp": self.timestamp,
            "simTime": self.sim_time,
            "unsent": [reading.to_json() for reading in self.unsent],
        }

    @classmethod
    def from_json(cls, data: Any) -> MeterState:
        try:
            if data["version"] != STATE_VERSION:
                raise ValueError(f"unsupported version {data['version']!r}")
            state = cls(
                meter=to_checksum_address(data["meter"]),
                cumulative_mwh=int(data["cumulativeMilliWh"]),
                timestamp=None if data["timestamp"] is None else int(data["timestamp"]),
                sim_time=None if data["simTime"] is None else float(data["simTime"]),
                unsent=tuple(reading_from_json(item) for item in data["unsent"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed meter state: {err}") from err
        if state.cumulative_mwh < 0 or (state.timestamp is None and state.sim_time is not None):
            raise ValueError("malformed meter state: negative energy or a simulator clock without a reading")
        return state


class StateFile:
    """The meter's state in a small JSON file, replaced atomically so a crash leaves the old or new."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> MeterState | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ConfigError(f"cannot read --state-file {self.path}: {err.strerror}") from err
        try:
            return MeterState.from_json(json.loads(text))
        except ValueError as err:
            raise ConfigError(
                f"state file {self.path} is not a meter state: {err}; restore it, or move it away to start afresh"
            ) from err

    def save(self, state: MeterState) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as out:
            json.dump(state.to_json(), out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
