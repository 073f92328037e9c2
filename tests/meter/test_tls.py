"""TLS for real: `mqtts://` against Mosquitto with a TLS listener and `homeassistants://` against the
Home Assistant protocol peer served over https / wss, each on a free 127.0.0.1 port, with a
throwaway CA and server certificates made here (`cryptography`). With `ca-file=` naming the CA that
signed the server's certificate, readings arrive; a certificate TLS must not trust (a CA not given,
another CA, a name it is not for, expired) gives no reading and an error naming the certificate
problem. The gateway does not stop over it: it retries, and once the certificate is renewed it
signs the meter's newest value, nothing invented or lost."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import ipaddress
import json
import logging
import os
import ssl
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from eth_account import Account
from eth_utils.address import to_checksum_address

from devchain.anvil import REPO_ROOT
from oracle.meter.errors import ConfigError, SourceUnavailable
from oracle.meter.gateway import Gateway
from oracle.meter.sources import open_source
from oracle.meter.sources.base import RawReading
from oracle.meter.sources.homeassistant import HomeAssistantSource
from oracle.meter.sources.mqtt import MqttSource
from oracle.readings import Domain
from tests.meter.conftest import TOKEN, Mosquitto, no_oracle, until
from tests.meter.test_homeassistant import T0, HomeAssistant

NOW = 1_767_225_600
TOPIC = "tele/meter/SENSOR"
DOMAIN = Domain(31337, to_checksum_address("0x" + "11" * 20))


# --- a throwaway PKI ------------------------------------------------------------------------------


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


class TestCA:
    """A CA of its own (in `workdir`) that issues server certificates; `pem` is what a client trusts."""

    __test__ = False  # not a test class

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Energy-Kart test CA {name}")])
        now = datetime.datetime.now(datetime.UTC)
        usage = x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip
        cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=3))
            .not_valid_after(now + datetime.timedelta(days=3))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = workdir / f"ca-{name}.pem"
        self.pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, stem: str, *, dns: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",),
        expired: bool = False,
    ) -> tuple[Path, Path]:  # fmt: skip
        """A server certificate and its key (`stem`.pem, `stem`.key; overwritten when issued again)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - datetime.timedelta(days=2), now - datetime.timedelta(days=1)) if expired else (
            now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
        )  # fmt: skip
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.workdir / f"{stem}.pem", self.workdir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path


@dataclass
class Pki:
    ca: TestCA  # signs the servers' certificates
    other: TestCA  # a CA that signed nothing of these servers


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    workdir = tmp_path / "pki"
    workdir.mkdir()
    return Pki(TestCA(workdir, "ours"), TestCA(workdir, "other"))


# Certificates TLS must refuse: (how the server's certificate is issued, the CA the client is given,
# what the error names). Neither CA is in the system's store.
UNTRUSTED: dict[str, tuple[dict[str, Any], str | None, str]] = {
    "no ca-file": ({}, None, r"unable to get local issuer certificate|self-signed certificate in certificate chain"),
    "another CA": ({}, "other", r"unable to get local issuer certificate|self-signed certificate in certificate chain"),
    "another name": ({"dns": ("meter.example",), "ips": ()}, "ours", r"IP address mismatch"),
    "expired": ({"expired": True}, "ours", r"certificate has expired"),
}


def ca_query(pki: Pki, which: str | None) -> str:
    return "" if which is None else f"ca-file={(pki.ca if which == 'ours' else pki.other).pem}"


# --- mqtts:// against Mosquitto ---------------------------------------------------------------------


@pytest.fixture
def tls_mosquitto(mosquitto_binary: Path, tmp_path: Path) -> Iterator[Callable[[Path, Path, Path], Mosquitto]]:
    """Start Mosquitto brokers with a TLS listener (the conftest's broker, with its listener's
    cafile / certfile / keyfile); all are stopped when the test ends."""
    started: list[Mosquitto] = []

    def start(cafile: Path, certfile: Path, keyfile: Path) -> Mosquitto:
        workdir = tmp_path / f"mosquitto-tls-{len(started)}"
        workdir.mkdir()
        broker = Mosquitto(workdir, {})
        with broker.config.open("a") as config:  # these apply to the listener above them
            config.write(f"cafile {cafile}\ncertfile {certfile}\nkeyfile {keyfile}\n")
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()


def meter_tls() -> ssl.SSLContext:
    """The meter's side (not under test): it publishes whatever certificate the broker shows."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def publish(broker: Mosquitto, payload: str) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, tls_context=meter_tls()) as client:
        await client.publish(TOPIC, payload, qos=1)


async def test_mqtts_with_the_ca_file(tls_mosquitto, pki) -> None:
    broker = tls_mosquitto(pki.ca.pem, *pki.ca.issue("broker"))
    url = f"mqtts://127.0.0.1:{broker.port}/{TOPIC}?field=SML.Total_in&{ca_query(pki, 'ours')}"
    source = MqttSource(urlsplit(url), clock=lambda: NOW)
    subscribed = broker.log.count("Sending SUBACK")

    async def meter() -> None:
        await until(lambda: broker.log.count("Sending SUBACK") > subscribed, "the source's subscription")
        while True:
            await publish(broker, '{"SML":{"Total_in":4321.0987}}')
            await asyncio.sleep(0.2)

    task = asyncio.create_task(meter())
    readings = source.readings()
    assert isinstance(readings, AsyncGenerator)
    try:
        async with asyncio.timeout(20), contextlib.aclosing(readings):
            assert await anext(readings) == RawReading(4_321_098_700, NOW)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert "ca-file" not in source.name
    # the source really spoke TLS: its client connected to a listener that speaks nothing else
    assert "New client connected from 127.0.0.1" in broker.log


@pytest.mark.parametrize("case", list(UNTRUSTED))
async def test_mqtts_refuses_an_untrusted_certificate(tls_mosquitto, pki, case) -> None:
    issue, trusted, reason = UNTRUSTED[case]
    broker = tls_mosquitto(pki.ca.pem, *pki.ca.issue("broker", **issue))
    source = MqttSource(urlsplit(f"mqtts://127.0.0.1:{broker.port}/{TOPIC}?{ca_query(pki, trusted)}"))
    readings = source.readings()
    assert isinstance(readings, AsyncGenerator)
    async with asyncio.timeout(20), contextlib.aclosing(readings):
        with pytest.raises(SourceUnavailable, match=rf"CERTIFICATE_VERIFY_FAILED.*({reason})"):
            await anext(readings)
    # the broker saw the source break the handshake off with a TLS alert (logged as "OpenSSL
    # Error[0]: error:0A000418:SSL routines::tlsv1 alert unknown ca", "...sslv3 alert certificate
    # expired" or "Client connection from 127.0.0.1 failed: error:..."), and no MQTT session came of it
    await until(lambda: "SSL routines::" in broker.log, "the broker to log the broken-off handshake")
    assert "New client connected" not in broker.log


async def test_the_gateway_waits_out_an_expired_broker_certificate(tls_mosquitto, pki, caplog) -> None:
    """The broker's certificate has expired: the gateway signs nothing, says why once, keeps
    retrying; the certificate is renewed (a broker restart): it signs the meter's newest value."""
    cert, key = pki.ca.issue("broker", expired=True)
    broker = tls_mosquitto(pki.ca.pem, cert, key)
    published: list[int] = []
    counter = iter(range(5_000_000, 6_000_000, 3))  # Wh

    async def meter(stop: asyncio.Event) -> None:
        while not stop.is_set():
            value = next(counter)
            try:
                await publish(broker, json.dumps({"ENERGY": {"Total": value / 1000}}))
            except aiomqtt.MqttError:
                pass  # the broker restarts: this value reaches no one; the counter counts on
            else:
                published.append(value)
            await asyncio.sleep(0.2)

    out = io.StringIO()
    gateway = Gateway(Account.create(), DOMAIN, read_only=True, retry_delays=(0.2, 0.5))
    url = f"mqtts://127.0.0.1:{broker.port}/{TOPIC}?field=ENERGY.Total&{ca_query(pki, 'ours')}"
    source = MqttSource(urlsplit(url))
    stop_meter, stop_gateway = asyncio.Event(), asyncio.Event()

    def signed() -> list[int]:
        return [json.loads(line)["cumulativeWh"] for line in out.getvalue().splitlines()]

    with caplog.at_level(logging.INFO, logger="oracle.meter.gateway"):
        async with no_oracle() as sender:
            publishing = asyncio.create_task(meter(stop_meter))
            run = asyncio.create_task(gateway.run(source, sender, interval=1, dry_run=True, stop=stop_gateway, out=out))
            await until(lambda: "lost" in caplog.text, "the source to be lost")
            await until(lambda: len(published) >= 5, "the meter to publish")
            await asyncio.sleep(1)
            assert signed() == []  # values published, none from a broker TLS does not trust
            assert not run.done()  # the gateway retries, it does not stop
            broker.stop()
            pki.ca.issue("broker")  # renewed, in the same files
            broker.start()
            await until(lambda: len(signed()) >= 1, "a reading after the renewal")
            stop_meter.set()
            await publishing
            await until(lambda: signed()[-1] == published[-1], "the last value to be signed")
            stop_gateway.set()
            assert await asyncio.wait_for(run, 10) == len(signed())
    values = signed()
    assert set(values) <= set(published)  # nothing invented
    assert values == sorted(set(values))  # nothing repeated, nothing backwards
    said = [r.getMessage() for r in caplog.records if "lost" in r.getMessage() or "is back" in r.getMessage()]
    assert len(said) == 2
    assert "CERTIFICATE_VERIFY_FAILED" in said[0]
    assert "certificate has expired" in said[0]
    assert said[1] == f"source {source.name} is back"


# --- homeassistants:// against the protocol peer over https / wss ---------------------------------


class TlsHomeAssistant(HomeAssistant):
    """The protocol peer of test_homeassistant.py behind TLS; `renew` loads another certificate,
    which every handshake from then on shows."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__()
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(cert, key)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def renew(self, cert: Path, key: Path) -> None:
        self.tls.load_cert_chain(cert, key)

    def tls_url(self, query: str) -> str:
        return f"homeassistants://127.0.0.1:{self.port}/sensor.grid_import?token-file={{token}}&{query}"


@contextlib.asynccontextmanager
async def tls_home_assistant(cert: Path, key: Path) -> AsyncIterator[TlsHomeAssistant]:
    ha = TlsHomeAssistant(cert, key)
    await ha.start()
    try:
        yield ha
    finally:
        await ha.stop()


def ha_source(url: str, token_file: Path, session: aiohttp.ClientSession) -> HomeAssistantSource:
    source = open_source(urlsplit(url.format(token=token_file)), interval=60, session=session)
    assert isinstance(source, HomeAssistantSource)
    return source


async def test_homeassistants_with_the_ca_file(pki, session, token_file) -> None:
    async with tls_home_assistant(*pki.ca.issue("ha")) as ha:
        await ha.set("1234.5678", "kWh", T0)
        source = ha_source(ha.tls_url(ca_query(pki, "ours")), token_file, session)
        readings = source.readings()
        assert isinstance(readings, AsyncGenerator)
        async with asyncio.timeout(20), contextlib.aclosing(readings):
            assert await anext(readings) == RawReading(1_234_567_800, T0)  # REST over https
            await until(lambda: ha.subscribers, "the subscription over wss")
            await ha.set("1234.9999", "kWh", T0 + 10)  # pushed over wss
            assert await anext(readings) == RawReading(1_234_999_900, T0 + 10)
    assert "ca-file" not in source.name


@pytest.mark.parametrize("case", list(UNTRUSTED))
async def test_homeassistants_refuses_an_untrusted_certificate(pki, session, token_file, case) -> None:
    issue, trusted, reason = UNTRUSTED[case]
    async with tls_home_assistant(*pki.ca.issue("ha", **issue)) as ha:
        await ha.set("1", "kWh", T0)
        source = ha_source(ha.tls_url(ca_query(pki, trusted)), token_file, session)
        readings = source.readings()
        assert isinstance(readings, AsyncGenerator)
        async with asyncio.timeout(20), contextlib.aclosing(readings):
            with pytest.raises(SourceUnavailable) as refused:
                await anext(readings)
        assert ha.subscribers == []  # not a frame reached Home Assistant's API
    message = str(refused.value)
    assert message.startswith("the TLS certificate of Home Assistant is not trusted")
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert any(word in message for word in reason.split("|")), message
    assert message.endswith("for a private CA give ca-file=FILE")
    assert TOKEN not in message


async def test_the_gateway_waits_out_an_expired_home_assistant_certificate(pki, session, token_file, caplog) -> None:
    async with tls_home_assistant(*pki.ca.issue("ha", expired=True)) as ha:
        await ha.set("10", "kWh", T0)
        out = io.StringIO()
        gateway = Gateway(Account.create(), DOMAIN, read_only=True, retry_delays=(0.2, 0.5))
        source = ha_source(ha.tls_url(ca_query(pki, "ours")), token_file, session)
        stop = asyncio.Event()

        def signed() -> list[int]:
            return [json.loads(line)["cumulativeWh"] for line in out.getvalue().splitlines()]

        with caplog.at_level(logging.INFO, logger="oracle.meter.gateway"):
            async with no_oracle() as sender:
                run = asyncio.create_task(gateway.run(source, sender, interval=1, dry_run=True, stop=stop, out=out))
                await until(lambda: "lost" in caplog.text, "the source to be lost")
                await asyncio.sleep(1)
                assert signed() == []
                assert not run.done()  # the gateway retries, it does not stop
                ha.renew(*pki.ca.issue("ha"))
                await until(lambda: signed() == [10_000], "the state after the renewal")
                await until(lambda: ha.subscribers, "the subscription")
                await ha.set("10.5", "kWh", T0 + 10)
                await until(lambda: signed() == [10_000, 10_500], "the next value")
                stop.set()
                assert await asyncio.wait_for(run, 10) == 2
    said = [r.getMessage() for r in caplog.records if "lost" in r.getMessage() or "is back" in r.getMessage()]
    assert len(said) == 2
    assert "TLS certificate of Home Assistant is not trusted" in said[0]
    assert "certificate has expired" in said[0]
    assert said[1] == f"source {source.name} is back"


async def gateway_cli(*args: str) -> tuple[int, str, str]:
    """`python -m oracle.meter ARGS --dry-run --once` in a subprocess (the peer keeps serving)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oracle.meter", *args, "--chain-id", "31337", "--contract", DOMAIN.contract,
        "--dry-run", "--once", cwd=REPO_ROOT, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ENERGYKART_METER_KEY": Account.create().key.hex()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_command_line_reads_homeassistants_with_the_ca_file(pki, token_file) -> None:
    async with tls_home_assistant(*pki.ca.issue("ha")) as ha:
        await ha.set("2.5", "kWh", T0)
        url = ha.tls_url(ca_query(pki, "ours")).format(token=token_file)
        code, out, err = await gateway_cli("--source", url, "--timeout", "30")
        assert code == 0, err
        assert json.loads(out)["cumulativeWh"] == 2_500
        untrusted = ha.tls_url("").rstrip("&").format(token=token_file)
        code, out, err = await gateway_cli("--source", untrusted, "--timeout", "3")
    assert (code, out) == (1, "")  # no reading, and no traceback: the status of a --once timeout
    assert "TLS certificate of Home Assistant is not trusted" in err
    assert "CERTIFICATE_VERIFY_FAILED" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("homeassistant://ha:8123/sensor.x?token-file={token}&ca-file={ca}", "needs TLS"),
        ("homeassistants://ha/sensor.x?token-file={token}&ca-file=/nonexistent.pem", "cannot read ca-file"),
        ("homeassistants://ha/sensor.x?token-file={token}&ca-file={token}", "cannot read ca-file"),  # not PEM
    ],
)
def test_bad_ca_files(url, message, pki, token_file, session) -> None:
    with pytest.raises(ConfigError, match=message):
        HomeAssistantSource(urlsplit(url.format(token=token_file, ca=pki.ca.pem)), session=session, interval=60)
