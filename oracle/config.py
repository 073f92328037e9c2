"""The oracle's configuration: command line over environment over a TOML file, validated once.

Every problem is reported as a `ConfigError` that names the option and says what to do; the
entry point prints it and exits with status 2. The relayer key never appears in a repr, a log
line or an error message.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import is_address, to_checksum_address

DEFAULT_CONFIRMATIONS = 1
DEFAULT_DB = Path("energykart-oracle.sqlite3")
DEFAULT_LISTEN = "127.0.0.1:8787"
DEFAULT_GAS_BUDGET = 6_000_000
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_REPLACE_AFTER = 180  # seconds a settle transaction may stay unmined before a higher fee replaces it
DEFAULT_RETENTION = 7 * 24 * 3600  # seconds settled readings are kept
MIN_REPLACE_AFTER = 1
GWEI = 10**9  # wei per gwei: --max-fee is given in gwei, kept in wei
MIN_GAS_BUDGET = 100_000  # one reading plus the transaction's own overhead, with room
MIN_MAX_BODY = 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# The options, as (flag, environment variable or None, key in the config file).
_SOURCES: dict[str, tuple[str, str | None]] = {
    "rpc_url": ("--rpc-url", "ENERGYKART_RPC_URL"),
    "contract": ("--contract", "ENERGYKART_CONTRACT"),
    "relayer_key_file": ("--relayer-key-file", "ENERGYKART_RELAYER_KEY_FILE"),
    "timestep": ("--timestep", "ENERGYKART_TIMESTEP"),
    "confirmations": ("--confirmations", "ENERGYKART_CONFIRMATIONS"),
    "db": ("--db", "ENERGYKART_DB"),
    "listen": ("--listen", "ENERGYKART_LISTEN"),
    "start_block": ("--start-block", "ENERGYKART_START_BLOCK"),
    "replace_after": ("--replace-after", None),
    "retention": ("--retention", "ENERGYKART_RETENTION"),
    "gas_budget": ("--gas-budget", None),
    "max_fee": ("--max-fee", None),
    "max_body": ("--max-body", None),
    "log_level": ("--log-level", None),
    "dev": ("--dev", None),
}
KEY_ENV = "ENERGYKART_RELAYER_KEY"


class ConfigError(ValueError):
    """Configuration the user has to fix; the message says which option and how."""


class RelayerKey:
    """The relayer's private key. Its repr and str never show the key."""

    __slots__ = ("_account",)

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    @property
    def account(self) -> LocalAccount:
        return self._account

    @property
    def address(self) -> ChecksumAddress:
        return self._account.address

    def __repr__(self) -> str:
        return f"RelayerKey(address={self._account.address}, key=<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Config:
    """Validated oracle settings."""

    rpc_url: str
    contract: ChecksumAddress
    relayer_key: RelayerKey = field(repr=False)
    timestep: int | None  # None: use the contract's timestep()
    confirmations: int
    db: Path
    host: str
    port: int
    start_block: int | None  # None: the block recorded in the database, else found on the chain
    replace_after: int
    retention: int  # 0: keep every reading
    gas_budget: int
    max_fee: int | None  # wei per gas a settle transaction may offer at most; None: no ceiling
    max_body: int
    log_level: str
    dev: bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energykart-oracle",
        description=(
            "Energy-Kart meter oracle: accepts signed meter readings over HTTP, stores them durably, "
            "settles the newest reading of every meter on chain each timestep, and finalizes offers "
            "and releases closed connections (keeper). Precedence: flags > environment > --config file."
        ),
        epilog=(
            f"The relayer key comes from --relayer-key-file, ENERGYKART_RELAYER_KEY_FILE or {KEY_ENV} "
            "(hex); it is never printed. Exit status 2: invalid configuration."
        ),
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML file with any of the options below")
    parser.add_argument("--rpc-url", help="JSON-RPC URL of an Ethereum node (env ENERGYKART_RPC_URL)")
    parser.add_argument("--contract", help="EnergyMarket contract address (env ENERGYKART_CONTRACT)")
    parser.add_argument(
        "--relayer-key-file",
        metavar="PATH",
        help=f"file holding the relayer's hex private key (env ENERGYKART_RELAYER_KEY_FILE, or the key in {KEY_ENV})",
    )
    parser.add_argument(
        "--timestep",
        metavar="SECONDS",
        help="settlement period (env ENERGYKART_TIMESTEP; default: the contract's timestep())",
    )
    parser.add_argument(
        "--confirmations",
        metavar="N",
        help="blocks on top of a settle transaction before its result is recorded; 0 for an "
        f"automining dev chain (env ENERGYKART_CONFIRMATIONS; default {DEFAULT_CONFIRMATIONS})",
    )
    parser.add_argument("--db", metavar="PATH", help=f"SQLite database (env ENERGYKART_DB; default ./{DEFAULT_DB})")
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help=f"HTTP address (env ENERGYKART_LISTEN; default {DEFAULT_LISTEN})"
    )
    parser.add_argument(
        "--start-block",
        metavar="N",
        help="the market's deployment block: its history is read from there (env ENERGYKART_START_BLOCK; "
        "default: found on the chain once and kept in the database; devchain.deploy prints it)",
    )
    parser.add_argument(
        "--replace-after",
        metavar="SECONDS",
        help="a settle transaction not mined after this long is replaced by one with a higher fee "
        f"(default {DEFAULT_REPLACE_AFTER})",
    )
    parser.add_argument(
        "--retention",
        metavar="SECONDS",
        help="readings done (settled, superseded, skipped) are deleted this long after they were accepted; "
        f"0 keeps them all (env ENERGYKART_RETENTION; default {DEFAULT_RETENTION}, 7 days)",
    )
    parser.add_argument(
        "--gas-budget", metavar="GAS", help=f"gas limit of one settle transaction (default {DEFAULT_GAS_BUDGET})"
    )
    parser.add_argument(
        "--max-fee",
        metavar="GWEI",
        help="ceiling of the max fee per gas (in gwei, e.g. 50 or 0.5) a settle transaction offers, also when "
        "replaced; while the chain asks more, a settle is sent at the ceiling and waits, and the keeper's "
        "finalize and release wait (default: no ceiling)",
    )
    parser.add_argument(
        "--max-body", metavar="BYTES", help=f"largest accepted request body (default {DEFAULT_MAX_BODY})"
    )
    parser.add_argument("--log-level", help=f"one of {', '.join(LOG_LEVELS)} (default {DEFAULT_LOG_LEVEL})")
    parser.add_argument(
        "--dev",
        action="store_const",
        const=True,
        default=None,
        help="development mode: enables POST /v1/admin/tick (run one relayer and keeper round now)",
    )
    return parser


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Parse flags, environment and the config file; raise ConfigError on any problem."""
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    file_values = _read_file(args.config) if args.config is not None else {}
    raw: dict[str, tuple[Any, str]] = {}  # option -> (value, where it came from)
    for name, (flag, env_name) in _SOURCES.items():
        flag_value = getattr(args, name)
        if flag_value is not None:
            raw[name] = (flag_value, flag)
        elif env_name is not None and env.get(env_name):
            raw[name] = (env[env_name], env_name)
        elif name in file_values:
            raw[name] = (file_values[name], f"{name} in {args.config}")
    return _validate(raw, env)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as err:
        raise ConfigError(f"--config: cannot read {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config: {path} is not valid TOML: {err}") from err
    unknown = sorted(set(data) - set(_SOURCES))
    if "relayer_key" in unknown:
        raise ConfigError(
            f"--config: {path} must not hold the key itself; set relayer_key_file to a file readable only by the oracle"
        )
    if unknown:
        raise ConfigError(f"--config: unknown option(s) {', '.join(unknown)} in {path}; known: {', '.join(_SOURCES)}")
    return data


def _int(raw: dict[str, tuple[Any, str]], name: str, default: int, minimum: int, what: str) -> int:
    if name not in raw:
        return default
    value, source = raw[name]
    try:
        number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value).replace("_", ""))
    except ValueError:
        raise ConfigError(f"{source}: {value!r} is not an integer; give {what}") from None
    if number < minimum:
        raise ConfigError(f"{source}: {number} is too small; give {what} (at least {minimum})")
    return number


def _gwei(raw: dict[str, tuple[Any, str]], name: str, what: str) -> int | None:
    """An optional positive amount in gwei (a decimal fraction is fine), as wei."""
    if name not in raw:
        return None
    value, source = raw[name]
    try:
        if isinstance(value, bool):
            raise InvalidOperation
        number = Decimal(str(value).replace("_", "").strip())
        if not number.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise ConfigError(f"{source}: {value!r} is not a number; give {what}") from None
    wei = math.floor(number * GWEI)
    if wei < 1:
        raise ConfigError(f"{source}: {value} is too small; give {what} (more than 0)")
    return wei


def _validate(raw: dict[str, tuple[Any, str]], env: Mapping[str, str]) -> Config:
    if "rpc_url" not in raw:
        raise ConfigError("--rpc-url is required (or ENERGYKART_RPC_URL): the JSON-RPC URL of an Ethereum node")
    rpc_url, source = str(raw["rpc_url"][0]), raw["rpc_url"][1]
    parts = urlsplit(rpc_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source}: {rpc_url!r} is not an http(s) URL; give the node's JSON-RPC URL")

    if "contract" not in raw:
        raise ConfigError("--contract is required (or ENERGYKART_CONTRACT): the EnergyMarket contract address")
    contract, source = str(raw["contract"][0]), raw["contract"][1]
    if not is_address(contract) or not contract.startswith("0x"):
        raise ConfigError(f"{source}: {contract!r} is not an address; give the contract's 0x-prefixed address")

    timestep = _int(raw, "timestep", 0, 1, "the settlement period in seconds") if "timestep" in raw else None
    listen, source = (str(raw["listen"][0]), raw["listen"][1]) if "listen" in raw else (DEFAULT_LISTEN, "--listen")
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{source}: {listen!r} is not HOST:PORT; give e.g. {DEFAULT_LISTEN}")
    log_level = str(raw["log_level"][0]).upper() if "log_level" in raw else DEFAULT_LOG_LEVEL
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"{raw['log_level'][1]}: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    dev = raw.get("dev", (False, ""))[0]
    if not isinstance(dev, bool):
        raise ConfigError(f"{raw['dev'][1]}: must be true or false")

    return Config(
        rpc_url=rpc_url,
        contract=to_checksum_address(contract),
        relayer_key=_relayer_key(raw, env),
        timestep=timestep,
        confirmations=_int(raw, "confirmations", DEFAULT_CONFIRMATIONS, 0, "a number of blocks"),
        db=Path(str(raw["db"][0])) if "db" in raw else DEFAULT_DB,
        host=host.strip("[]"),
        port=int(port_text),
        start_block=_int(raw, "start_block", 0, 0, "a block number") if "start_block" in raw else None,
        replace_after=_int(raw, "replace_after", DEFAULT_REPLACE_AFTER, MIN_REPLACE_AFTER, "a number of seconds"),
        retention=_int(raw, "retention", DEFAULT_RETENTION, 0, "a number of seconds (0: keep all)"),
        gas_budget=_int(raw, "gas_budget", DEFAULT_GAS_BUDGET, MIN_GAS_BUDGET, "the gas limit of one settle"),
        max_fee=_gwei(raw, "max_fee", "the highest max fee per gas in gwei, e.g. 50"),
        max_body=_int(raw, "max_body", DEFAULT_MAX_BODY, MIN_MAX_BODY, "a size in bytes"),
        log_level=log_level,
        dev=dev,
    )


def _relayer_key(raw: dict[str, tuple[Any, str]], env: Mapping[str, str]) -> RelayerKey:
    key_file = raw.get("relayer_key_file")
    inline = env.get(KEY_ENV)
    # A flag names a file explicitly, so it wins over an inline key in the environment.
    if key_file is not None and key_file[1] != "--relayer-key-file" and inline:
        raise ConfigError(f"both {KEY_ENV} and {key_file[1]} are set; keep only one source for the relayer key")
    if key_file is not None:
        path = Path(str(key_file[0]))
        try:
            text = path.read_text().strip()
        except OSError as err:
            raise ConfigError(f"{key_file[1]}: cannot read {path}: {err.strerror}") from err
        if path.stat().st_mode & 0o077:
            logging.getLogger(__name__).warning("relayer key file %s is readable by others; chmod 600 it", path)
        source = f"{key_file[1]} ({path})"
    elif inline:
        text, source = inline.strip(), KEY_ENV
    else:
        raise ConfigError(
            f"no relayer key: give --relayer-key-file PATH (a file with the hex private key) or set {KEY_ENV}"
        )
    try:
        account: LocalAccount = Account.from_key(text)
    except (ValueError, TypeError):
        # The message must not echo the text: it may be a (slightly mangled) key.
        raise ConfigError(f"{source}: not a hex private key (64 hex digits, optionally 0x-prefixed)") from None
    return RelayerKey(account)
