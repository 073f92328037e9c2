"""`energykart-meter`: the meter gateway's command line (`--help`; docs/METER.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult

import aiohttp
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address

from oracle.meter.errors import ConfigError, GatewayStopped
from oracle.meter.gateway import DEFAULT_MAX_REFUSALS, Gateway
from oracle.meter.profiles import PROFILE_NAMES, default_seed, parse_profile
from oracle.meter.sender import Sender
from oracle.meter.signer import KEY_ENV, create_keystore, load_key, load_keystore
from oracle.meter.sources import SCHEMES, Source, open_source, split_source
from oracle.meter.sources.sim import SimSource
from oracle.readings import MAX_WH, Domain

_LOGGER = logging.getLogger("oracle.meter")

DEFAULT_ORACLE = "http://127.0.0.1:8787"
DEFAULT_INTERVAL = 60.0
EXIT_UNDELIVERED = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energykart-meter",
        description="The meter gateway: read the cumulative imported energy of a meter (--source), sign each "
        "reading with the meter key (EIP-712) and post it to an Energy-Kart oracle. "
        "'energykart-meter new-key --keystore FILE --password-file FILE' creates a key.",
        epilog=f"Sources: {', '.join(s + ':' for s in SCHEMES)} (docs/METER.md). The key comes from --keystore "
        f"with --password-file, --key-file, or the {KEY_ENV} environment variable (hex); it is never printed. "
        "Exit status: 0 done; 1 stopped (signal, --once timeout) with readings undelivered (kept in the state "
        "file, if any); 2 bad configuration; 3 the oracle refused readings --max-refusals times in a row, or "
        "the meter's counter went backwards (the log says what to do).",
    )
    parser.add_argument("--source", help="the meter, as a URL: dsmr:///dev/ttyUSB0, dsmr+tcp://HOST:PORT, "
                        "mqtt://BROKER:1883/TOPIC?field=PATH, modbus+tcp://HOST:502?unit=1&model=sdm630, "
                        "homeassistant://HOST:8123/sensor.ENTITY?token-file=FILE, sim:household")  # fmt: skip
    parser.add_argument("--key-file", type=Path, help=f"file holding the meter's hex private key (else ${KEY_ENV})")
    parser.add_argument("--keystore", type=Path, help="encrypted eth-account JSON keystore of the meter key")
    parser.add_argument("--password-file", type=Path, help="file holding the --keystore password")
    parser.add_argument("--oracle", default=DEFAULT_ORACLE, help="oracle base URL (default: %(default)s)")
    parser.add_argument("--chain-id", type=int, required=True, help="chain id of the EIP-712 domain")
    parser.add_argument("--contract", required=True, help="EnergyMarket address of the EIP-712 domain")
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help="seconds between readings, >= 1: the newest value is signed at most this often, and polled "
        "sources are read this often (default: %(default)s)",
    )
    parser.add_argument(
        "--state-file", type=Path, help="JSON file keeping the last signed reading and unsent readings across restarts"
    )
    parser.add_argument("--once", action="store_true", help="read, sign and post one reading, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be signed (JSON lines); sign and post nothing"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="with --once: give up after this many seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--max-refusals",
        type=int,
        default=DEFAULT_MAX_REFUSALS,
        help="exit (status 3) after this many refused readings in a row (default: %(default)s)",
    )
    parser.add_argument("--count", type=int, help="stop after this many readings, once delivered (default: run on)")
    sim = parser.add_argument_group("simulator (sim:PROFILE)")
    sim.add_argument("--profile", help=f"shorthand for --source sim:PROFILE; profiles: {', '.join(PROFILE_NAMES)}")
    sim.add_argument("--seed", type=int, help="profile seed, for reproducible runs (default: from the address)")
    sim.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="simulated seconds per real second, e.g. 1440 replays a day in a minute (default: %(default)s)",
    )
    sim.add_argument(
        "--start-wh", type=int, default=0, help="cumulative Wh of a new meter (ignored when resuming a state file)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)"
    )
    return parser


def _new_key_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energykart-meter new-key",
        description="Create a meter key in an encrypted JSON keystore and print only its address, "
        "for the registrar to register.",
    )
    parser.add_argument("--keystore", type=Path, required=True, help="the keystore file to create (never overwritten)")
    parser.add_argument("--password-file", type=Path, required=True, help="file holding the password to encrypt it")
    return parser


@dataclass(frozen=True, slots=True)
class MeterConfig:
    account: LocalAccount
    domain: Domain
    oracle: str
    source: SplitResult
    interval: float
    state_file: Path | None
    once: bool
    dry_run: bool
    timeout: float
    max_refusals: int
    count: int | None
    seed: int | None
    speedup: float
    start_wh: int
    log_level: str


def _account(args: argparse.Namespace, environ: Mapping[str, str]) -> LocalAccount:
    if args.keystore is not None:
        if args.key_file is not None:
            raise ConfigError("give either --keystore or --key-file, not both")
        if args.password_file is None:
            raise ConfigError("--keystore needs --password-file (the file holding its password)")
        return load_keystore(args.keystore, args.password_file)
    if args.key_file is not None:
        try:
            return load_key(args.key_file.read_text())
        except OSError as err:
            raise ConfigError(f"cannot read --key-file {args.key_file}: {err.strerror}") from err
    if environ.get(KEY_ENV):
        return load_key(environ[KEY_ENV])
    raise ConfigError(f"no meter key: pass --keystore and --password-file, --key-file, or set {KEY_ENV}")


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> MeterConfig:
    """Parse and validate the command line; exits with status 2 and a clear message on errors."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        account = _account(args, environ)
        if not is_address(args.contract):
            raise ConfigError(f"--contract must be a 0x-prefixed 20-byte address, got {args.contract!r}")
        if args.chain_id <= 0:
            raise ConfigError(f"--chain-id must be positive, got {args.chain_id}")
        if not args.oracle.startswith(("http://", "https://")):
            raise ConfigError(f"--oracle must be an http:// or https:// URL, got {args.oracle!r}")
        if not (math.isfinite(args.interval) and args.interval >= 1):
            raise ConfigError(f"--interval must be at least 1 second, got {args.interval}")
        if not (math.isfinite(args.speedup) and args.speedup > 0):
            raise ConfigError(f"--speedup must be a positive number, got {args.speedup}")
        if not (math.isfinite(args.timeout) and args.timeout > 0):
            raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
        if args.count is not None and args.count < 1:
            raise ConfigError(f"--count must be at least 1, got {args.count}")
        if args.max_refusals < 1:
            raise ConfigError(f"--max-refusals must be at least 1, got {args.max_refusals}")
        if not 0 <= args.start_wh <= MAX_WH:
            raise ConfigError(f"--start-wh must be from 0 to {MAX_WH}, got {args.start_wh}")
        if args.source is not None and args.profile is not None:
            raise ConfigError("give either --source or --profile (which means --source sim:PROFILE), not both")
        if args.source is None and args.profile is None:
            raise ConfigError("no --source: name the meter to read, e.g. --source dsmr:///dev/ttyUSB0 (docs/METER.md)")
        source = split_source(args.source if args.source is not None else f"sim:{args.profile}")
        if source.scheme == "sim":
            parse_profile(source.path, 0)  # checked now, seeded once the address is known
    except ConfigError as err:
        parser.error(str(err))
    return MeterConfig(
        account=account,
        domain=Domain(args.chain_id, to_checksum_address(args.contract)),
        oracle=args.oracle.rstrip("/"),
        source=source,
        interval=args.interval,
        state_file=args.state_file,
        once=args.once,
        dry_run=args.dry_run,
        timeout=args.timeout,
        max_refusals=1 if args.once else args.max_refusals,
        count=args.count,
        seed=args.seed,
        speedup=args.speedup,
        start_wh=args.start_wh,
        log_level=args.log_level,
    )


def _source(config: MeterConfig, gateway: Gateway, session: aiohttp.ClientSession) -> Source:
    if config.source.scheme == "sim":
        seed = config.seed if config.seed is not None else default_seed(gateway.address)
        profile = parse_profile(config.source.path, seed)
        return SimSource(profile, resume=gateway.state, speedup=config.speedup, interval=config.interval)
    return open_source(config.source, interval=config.interval, session=session)


async def _run(config: MeterConfig, gateway: Gateway) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        source = _source(config, gateway, session)
        _LOGGER.info(
            "meter %s reading %s, last signed %s Wh, %s %s",
            gateway.address,
            source.name,
            gateway.cumulative_wh,
            "dry run: posting nothing to" if config.dry_run else "posting to",
            config.oracle,
        )
        return await gateway.run(
            source,
            Sender(session, config.oracle),
            interval=config.interval,
            stop=stop,
            once=config.once,
            dry_run=config.dry_run,
            count=config.count,
            give_up_after=config.timeout if config.once else None,
            out=sys.stdout,
        )


def new_key(argv: Sequence[str]) -> None:
    parser = _new_key_parser()
    args = parser.parse_args(argv)
    try:
        account = create_keystore(args.keystore, args.password_file)
    except ConfigError as err:
        parser.error(str(err))
    print(account.address)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["new-key"]:
        new_key(argv[1:])
        return
    config = parse_config(argv, os.environ)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(message)s")
    if config.log_level != "DEBUG":  # the gateway logs an outage once; these libraries would log each retry
        for library in ("pymodbus", "aiomqtt"):
            logging.getLogger(library).setLevel(logging.ERROR)
    try:
        gateway = Gateway(
            config.account,
            config.domain,
            state_file=config.state_file,
            start_mwh=config.start_wh * 1000 if config.source.scheme == "sim" else 0,
            max_refusals=config.max_refusals,
            read_only=config.dry_run,
        )
        taken = asyncio.run(_run(config, gateway))
    except ConfigError as err:
        _parser().error(str(err))
    except GatewayStopped as err:
        _LOGGER.error("stopping: %s", err)
        sys.exit(EXIT_REFUSED)
    if gateway.unsent:
        _LOGGER.warning("stopped with %d readings undelivered", len(gateway.unsent))
        sys.exit(EXIT_UNDELIVERED)
    if config.once and taken == 0:
        _LOGGER.error("no reading from %s within --timeout %g s", config.source.geturl().split("?")[0], config.timeout)
        sys.exit(EXIT_UNDELIVERED)
    sys.exit(0)
