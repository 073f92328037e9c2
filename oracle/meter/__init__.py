"""The meter gateway: reads a meter (DSMR P1 on a serial port or a TCP bridge, MQTT, Modbus TCP, a
Home Assistant sensor, or the simulator),
signs each cumulative reading with the meter key (EIP-712, see `oracle.readings`) and
posts it to any oracle, which relays it but cannot alter it. docs/METER.md describes it all.

- `sources/`: one module per kind behind one interface (`async for raw in source.readings()`);
- `gateway`: the key, the rules a signed reading keeps, the state file, delivery with backoff;
- `signer`: raw keys and encrypted keystores; `state`: the state file; `sender`: the oracle API;
- `simulated.Meter`: the simulator as a library (the demo and tests); `cli`: `energykart-meter`.
"""

from oracle.meter.cli import main
from oracle.meter.errors import ConfigError, CounterWentBackwards, GatewayStopped, SourceUnavailable
from oracle.meter.gateway import Gateway
from oracle.meter.profiles import ConstantProfile, EvProfile, HouseholdProfile, LoadProfile, parse_profile
from oracle.meter.signer import KEY_ENV
from oracle.meter.simulated import Meter
from oracle.meter.state import MeterState, StateFile

__all__ = [
    "KEY_ENV",
    "ConfigError",
    "ConstantProfile",
    "CounterWentBackwards",
    "EvProfile",
    "Gateway",
    "GatewayStopped",
    "HouseholdProfile",
    "LoadProfile",
    "Meter",
    "MeterState",
    "SourceUnavailable",
    "StateFile",
    "main",
    "parse_profile",
]
