"""The meter key: a raw hex key (file or environment) or an encrypted eth-account JSON keystore.

The gateway holds the key; the oracle never does. Nothing here logs or echoes a key or password.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from oracle.meter.errors import ConfigError

KEY_ENV = "ENERGYKART_METER_KEY"


def load_key(key: bytes | str) -> LocalAccount:
    """A meter account from a private key: 32 bytes, or hex with or without 0x. Never echoed."""
    try:
        account: LocalAccount = Account.from_key(key.strip() if isinstance(key, str) else key)
    except (ValueError, TypeError) as err:  # eth-keys and hexbytes raise either
        raise ConfigError("the meter key is not a valid secp256k1 private key (64 hex digits)") from err
    return account


def _read(path: Path, flag: str) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read {flag} {path}: {err.strerror}") from err


def read_password(path: Path) -> str:
    """The keystore password: the file's content without its trailing newline."""
    password = _read(path, "--password-file").rstrip("\r\n")
    if not password:
        raise ConfigError(f"--password-file {path} is empty: put the keystore's password in it")
    return password


def load_keystore(keystore: Path, password_file: Path) -> LocalAccount:
    """Decrypt an eth-account (Web3 Secret Storage) JSON keystore."""
    text = _read(keystore, "--keystore")
    password = read_password(password_file)
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"--keystore {keystore} is not JSON: create one with 'energykart-meter new-key'") from err
    try:
        key = Account.decrypt(data, password)
    except ValueError as err:  # eth-keyfile: "MAC mismatch" for a wrong password
        raise ConfigError(f"cannot decrypt --keystore {keystore}: wrong --password-file, or not a keystore") from err
    except (KeyError, TypeError) as err:
        raise ConfigError(f"--keystore {keystore} is not an eth-account JSON keystore (missing {err})") from err
    return load_key(bytes(key))


def create_keystore(keystore: Path, password_file: Path) -> LocalAccount:
    """A new meter key, encrypted into `keystore` (mode 0600; an existing file is never overwritten)."""
    password = read_password(password_file)
    account: LocalAccount = Account.create()
    encrypted = Account.encrypt(account.key, password)
    try:
        fd = os.open(keystore, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as err:
        raise ConfigError(f"--keystore {keystore} exists already: a meter keeps its key; choose another path") from err
    except OSError as err:
        raise ConfigError(f"cannot create --keystore {keystore}: {err.strerror}") from err
    with os.fdopen(fd, "w") as out:
        json.dump(encrypted, out)
        out.flush()
        os.fsync(out.fileno())
    return account
