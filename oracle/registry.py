"""What the oracle knows of the chain without asking it per reading: registered meters, head block.

Loaded at start-up from MeterRegistered / MeterRevoked events and meterOf, then kept current by
the watcher from new events, so the ingest path never waits on the node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ChainView:
    registered: set[str] = field(default_factory=set)  # checksummed meter addresses
    chain_up: bool = False
    head_block: int = 0
    head_timestamp: int = 0
    last_poll: float = 0.0  # monotonic time of the last successful poll

    def now(self) -> int:
        """The later of wall-clock time and the head block's time (a dev chain may run ahead)."""
        return max(int(time.time()), self.head_timestamp)
