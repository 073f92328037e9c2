"""deploy/: the systemd units and Containerfiles an operator installs.

Where `systemd-analyze` exists (Debian's systemd package), the units are verified by it and their
exposure scored offline; everywhere, their hardening keys are read with configparser, so the test
checks something meaningful without systemd as well."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from oracle.meter.cli import _parser as meter_parser
from tests.oracle.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
UNITS = ("energykart-oracle.service", "energykart-meter.service")
MAX_EXPOSURE = 20  # systemd-analyze security, in tenths: 0 is locked down, 100 a bare service (2.0 shown)
HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "RestrictSUIDSGID": "yes",
    "MemoryDenyWriteExecute": "yes",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",
    "UMask": "0077",
}


def _service(unit: str) -> dict[str, list[str]]:
    """The [Service] section, each key with all its values (systemd allows repeated keys)."""
    values: dict[str, list[str]] = {}
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    section = None
    for line in (DEPLOY / unit).read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    parser.read_string((DEPLOY / unit).read_text())
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    return values


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_hardened(unit: str) -> None:
    service = _service(unit)
    for key, wanted in HARDENING.items():
        assert service.get(key) == [wanted], key
    state = service["StateDirectory"][0]
    assert f"%S/{state}/" in service["ExecStart"][0]
    for credential in service["LoadCredential"]:
        name = credential.split(":", 1)[0]
        assert f"%d/{name}" in service["ExecStart"][0]


def test_oracle_unit_takes_the_key_as_a_credential() -> None:
    service = _service("energykart-oracle.service")
    assert service["LoadCredential"] == ["relayer-key:/etc/energykart/relayer.key"]
    assert "--relayer-key-file %d/relayer-key" in service["ExecStart"][0]
    assert "PrivateDevices" in service


def test_meter_unit_runs_the_gateway_cli() -> None:
    """The unit's command line is one the gateway's own parser accepts, with a keystore and a state file."""
    command = _service("energykart-meter.service")["ExecStart"][0]
    environment = {"METER_SOURCE": "dsmr:///dev/ttyUSB0", "METER_ORACLE": "http://127.0.0.1:8787",
                   "METER_CHAIN_ID": "100", "METER_CONTRACT": "0x" + "11" * 20, "METER_INTERVAL": "60"}  # fmt: skip
    for name, value in environment.items():
        command = command.replace("${" + name + "}", value)
    argv = command.split()[1:]
    args = meter_parser().parse_args(argv)
    assert (args.source, args.chain_id, args.interval) == ("dsmr:///dev/ttyUSB0", 100, 60.0)
    assert str(args.keystore) == "%d/meter-keystore"
    assert str(args.password_file) == "%d/meter-password"
    assert str(args.state_file) == "%S/energykart-meter/state.json"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze (configparser checks ran)")
def test_systemd_analyze_verifies_and_scores_the_units(tmp_path: Path) -> None:
    stub = tmp_path / "stub"  # verify wants ExecStart's binary to exist
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    for unit in UNITS:
        text = re.sub(r"/usr/local/bin/energykart-(oracle|meter)", str(stub), (DEPLOY / unit).read_text())
        (tmp_path / unit).write_text(text)
    units = [str(tmp_path / unit) for unit in UNITS]
    verify = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == ""
    for unit in units:
        score = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", unit],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert score.returncode == 0, score.stdout[-2000:]


@pytest.mark.parametrize(("name", "port"), [("Containerfile", "8787"), ("Containerfile.meter", None)])
def test_containerfiles_run_as_non_root_with_a_healthcheck(name: str, port: str | None) -> None:
    text = (DEPLOY / name).read_text()
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users
    assert users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text
    assert "not built" in text
    if port is not None:
        assert f"127.0.0.1:{port}/healthz" in text
