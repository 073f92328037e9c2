"""Home Assistant, for real: a demo market on a local chain, and Home Assistant trading on it for one home.

make ha [ARGS="--port 8123 --rpc-url http://127.0.0.1:8545"]

Starts anvil (or uses --rpc-url, an anvil node with its default accounts), deploys the market,
registers the meters of four homes, and gives the market some life: the demo home has bought from
a neighbour and sold to another (connections with energy delivered and paid), and there are open
offers and bids. Then it starts `hass` on a fresh copy of ha-config/, completes the onboarding
through Home Assistant's HTTP API, and sets up the Energy-Kart integration through the config-flow
API for the demo home, as a user would in the UI. It prints where to log in, and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.types import RPCEndpoint

from devchain.anvil import DEFAULT_MNEMONIC, REPO_ROOT, Anvil, free_port
from devchain.deploy import deploy_market, register_meters
from oracle.readings import Domain, sign_reading

HA_CONFIG: Final = REPO_ROOT / "ha-config"
INTEGRATION: Final = REPO_ROOT / "custom_components" / "energykart"
RUNTIME_DIR: Final = REPO_ROOT / ".ha-runtime"
USERNAME: Final = "energykart"
PASSWORD: Final = "energykart"  # noqa: S105 - a throwaway demo on loopback, printed for the user

GWEI: Final = 10**9
STARTUP_SECONDS: Final = 120
STATE_SECONDS: Final = 30
WALLET_SENSOR: Final = "sensor.energykart_wallet_balance"
# The helper sensors of ha-config/ that stand in for the home's inverter, meter and battery.
SOURCES: Final = {
    "solar_power": "sensor.solar_power",
    "house_consumption": "sensor.house_power",
    "battery_soc": "sensor.home_battery",
}

Account.enable_unaudited_hdwallet_features()


def node_account(index: int) -> LocalAccount:
    """Account `index` of the node's default mnemonic (unlocked on anvil)."""
    account: LocalAccount = Account.from_mnemonic(DEFAULT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def meter_key(home: str) -> LocalAccount:
    """The meter of a demo home: a fixed key, so every run has the same meter addresses."""
    account: LocalAccount = Account.from_key(keccak(text=f"energykart-demo-meter/{home}"))
    return account


@dataclass(frozen=True, slots=True)
class DemoMarket:
    """The deployed market and the demo home that Home Assistant trades for."""

    rpc_url: str
    chain_id: int
    contract: str
    home: LocalAccount
    home_meter: str

    @property
    def wallet_id(self) -> str:
        """The integration's unique id of the home's wallet (prefix of its entities' unique ids)."""
        return f"{self.chain_id}_{self.contract.lower()}_{self.home.address.lower()}"


class _Market:
    """Sends the demo's transactions from the node's unlocked accounts."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.w3 = contract.w3
        self.domain = Domain(chain_id=self.w3.eth.chain_id, contract=contract.address)

    def send(self, function: Any, sender: str, value: int = 0) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(function.transact({"from": sender, "value": value}))
        if receipt["status"] != 1:
            raise RuntimeError(f"{function.fn_name} failed: {receipt}")
        return receipt

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def offer(self, seller: str, energy_wh: int, gwei_per_kwh: int, seconds: int) -> tuple[int, int]:
        """Offer energy; return (offer id, bidding end)."""
        receipt = self.send(self.contract.functions.createOffer(energy_wh, gwei_per_kwh * GWEI, seconds), seller)
        created = self.contract.events.OfferCreated().process_receipt(receipt)[0]["args"]
        return int(created["id"]), int(created["biddingEnds"])

    def bid(self, offer_id: int, buyer: str, meter: str, gwei_per_kwh: int) -> None:
        price = gwei_per_kwh * GWEI
        escrow = int(self.contract.functions.escrowFor(offer_id, price).call())
        self.send(self.contract.functions.bid(offer_id, price, meter), buyer, escrow)

    def report(self, sender: str, readings: dict[str, tuple[LocalAccount, int]]) -> None:
        """Settle one signed reading (cumulative Wh) per meter, timestamped now."""
        now = self.now()
        signed = [sign_reading(key.key, self.domain, wh, now).as_tuple() for key, wh in readings.values()]
        self.send(self.contract.functions.settle(signed), sender)


def prepare_market(rpc_url: str) -> DemoMarket:
    """Deploy the market and play the trades that give the dashboard something to show."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    operator, home, sunny, oak, birch = (node_account(index) for index in range(5))
    meters = {name: meter_key(name) for name in ("home", "sunny", "oak", "birch")}
    contract = deploy_market(w3, operator.address)
    register_meters(
        contract,
        operator.address,
        [
            (meters["home"].address, home.address),
            (meters["sunny"].address, sunny.address),
            (meters["oak"].address, oak.address),
            (meters["birch"].address, birch.address),
        ],
    )
    market = _Market(contract)
    # Meters report before their owners may bid: no history is billed to a new connection.
    market.report(operator.address, {"home": (meters["home"], 12_400), "birch": (meters["birch"], 8_100)})

    # Two short auctions: the home buys 2 kWh from Sunny, and sells 1.5 kWh to Birch.
    bought, _ = market.offer(sunny.address, 2_000, 45_000, 2)
    sold, ends = market.offer(home.address, 1_500, 40_000, 2)
    market.bid(bought, home.address, meters["home"].address, 48_000)
    market.bid(sold, birch.address, meters["birch"].address, 42_000)
    while market.now() <= ends:  # anvil stamps blocks with the wall clock
        time.sleep(0.5)
        w3.provider.make_request(RPCEndpoint("evm_mine"), [])
    market.send(contract.functions.finalize(bought), operator.address)
    market.send(contract.functions.finalize(sold), operator.address)
    time.sleep(1.1)  # the next readings are strictly after the award
    w3.provider.make_request(RPCEndpoint("evm_mine"), [])
    market.report(operator.address, {"home": (meters["home"], 13_200), "birch": (meters["birch"], 9_200)})

    # The open market: offers from the neighbours, one of them already bid on, and the home's own.
    two_hours = 2 * 3600
    market.offer(sunny.address, 3_000, 50_000, two_hours)
    contested, _ = market.offer(sunny.address, 1_200, 46_000, two_hours)
    market.offer(oak.address, 2_500, 47_000, 90 * 60)
    market.bid(contested, birch.address, meters["birch"].address, 49_000)
    mine, _ = market.offer(home.address, 1_000, 55_000, two_hours)
    market.bid(mine, birch.address, meters["birch"].address, 56_000)
    return DemoMarket(
        rpc_url=rpc_url,
        chain_id=market.domain.chain_id,
        contract=contract.address,
        home=home,
        home_meter=meters["home"].address,
    )


def prepare_config(config_dir: Path) -> None:
    """A fresh Home Assistant config folder that links to ha-config/ and the integration.

    Links, not copies: an edit of the dashboard or of the integration shows on the next reload,
    while what Home Assistant writes (.storage, logs) stays in the runtime folder.
    """
    if config_dir.exists():
        shutil.rmtree(config_dir)
    config_dir.mkdir(parents=True)
    for source in HA_CONFIG.iterdir():
        (config_dir / source.name).symlink_to(source, target_is_directory=source.is_dir())
    (config_dir / "custom_components").mkdir()
    (config_dir / "custom_components" / "energykart").symlink_to(INTEGRATION, target_is_directory=True)
    # The core configuration lives in configuration.yaml, so its onboarding step is done up front:
    # finishing it through the API would also set up met, radio_browser and google_translate,
    # whose packages this installation does not have.
    storage = config_dir / ".storage"
    storage.mkdir()
    onboarding = {"version": 4, "minor_version": 1, "key": "onboarding", "data": {"done": ["core_config"]}}
    (storage / "onboarding").write_text(json.dumps(onboarding))


class HomeAssistantProcess:
    """`hass -c config_dir` on a port; use as a context manager, or call start() / stop()."""

    def __init__(self, config_dir: Path, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.config_dir = config_dir
        self.port = port or free_port()
        self.host = host
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104 - compared, not bound
        return f"http://{host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.config_dir / "home-assistant.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        env = {**os.environ, "ENERGYKART_HA_PORT": str(self.port), "ENERGYKART_HA_HOST": self.host}
        with (self.config_dir / "console.log").open("wb") as console:
            # --skip-pip: everything comes from the venv; Home Assistant installs nothing.
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argument list
                [sys.executable, "-m", "homeassistant", "--config", str(self.config_dir), "--skip-pip"],
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Wait until the HTTP server answers the onboarding API (the frontend is up with it)."""
        try:
            async with asyncio.timeout(STARTUP_SECONDS):
                while True:
                    if await self._answers(session):
                        return
                    await asyncio.sleep(0.5)
        except TimeoutError as err:
            raise TimeoutError(f"Home Assistant did not answer on {self.url} within {STARTUP_SECONDS} s") from err

    async def _answers(self, session: aiohttp.ClientSession) -> bool:
        if not self.running:
            raise RuntimeError(f"Home Assistant exited; see {self.config_dir / 'console.log'}")
        try:
            async with session.get(f"{self.url}/api/onboarding") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def _json(response: aiohttp.ClientResponse) -> Any:
    if response.status >= 400:
        raise RuntimeError(f"{response.method} {response.url.path}: {response.status} {await response.text()}")
    return await response.json()


async def onboard(session: aiohttp.ClientSession, base_url: str, username: str, password: str) -> str:
    """Create the owner and finish the onboarding, as the onboarding pages do; return an access token."""
    client_id = f"{base_url}/"
    async with session.post(
        f"{base_url}/api/onboarding/users",
        json={
            "client_id": client_id,
            "name": "Demo home",
            "username": username,
            "password": password,
            "language": "en",
        },
    ) as response:
        auth_code = (await _json(response))["auth_code"]
    async with session.post(
        f"{base_url}/auth/token",
        data={"grant_type": "authorization_code", "code": auth_code, "client_id": client_id},
    ) as response:
        token: str = (await _json(response))["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(f"{base_url}/api/onboarding/analytics", headers=headers) as response:
        await _json(response)
    async with session.post(
        f"{base_url}/api/onboarding/integration",
        headers=headers,
        json={"client_id": client_id, "redirect_uri": f"{base_url}/?auth_callback=1"},
    ) as response:
        await _json(response)
    return token


async def add_energykart(session: aiohttp.ClientSession, base_url: str, token: str, market: DemoMarket) -> str:
    """Set up the integration for the demo home through the config-flow API; return the entry id."""
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(
        f"{base_url}/api/config/config_entries/flow", headers=headers, json={"handler": "energykart"}
    ) as response:
        form = await _json(response)
    user_input = {
        "rpc_url": market.rpc_url,
        "contract_address": market.contract,
        "private_key": "0x" + bytes(market.home.key).hex(),
        "meter_address": market.home_meter,
        **SOURCES,
    }
    async with session.post(
        f"{base_url}/api/config/config_entries/flow/{form['flow_id']}", headers=headers, json=user_input
    ) as response:
        result = await _json(response)
    if result["type"] == "form" and str(result.get("step_id", "")).startswith("confirm_"):
        # The flow shows the market's currency for the user to confirm.
        async with session.post(
            f"{base_url}/api/config/config_entries/flow/{form['flow_id']}", headers=headers, json={}
        ) as response:
            result = await _json(response)
    if result["type"] != "create_entry":
        raise RuntimeError(f"the Energy-Kart config flow did not create an entry: {result}")
    entry_id: str = result["result"]["entry_id"]
    return entry_id


async def name_wallet_entities(session: aiohttp.ClientSession, base_url: str, token: str, market: DemoMarket) -> None:
    """Give the wallet's entities the short ids the dashboard uses (sensor.energykart_<key>).

    Home Assistant names them after the wallet's device, which carries the account address.
    """
    async with session.ws_connect(f"{base_url}/api/websocket") as ws:
        await ws.receive_json()  # auth_required
        await ws.send_json({"type": "auth", "access_token": token})
        if (await ws.receive_json())["type"] != "auth_ok":
            raise RuntimeError("websocket authentication failed")
        await ws.send_json({"id": 1, "type": "config/entity_registry/list"})
        entities = (await ws.receive_json())["result"]
        prefix = f"{market.wallet_id}-"
        message_id = 1
        for entity in entities:
            unique_id = str(entity["unique_id"])
            if entity["platform"] != "energykart" or not unique_id.startswith(prefix):
                continue
            domain = entity["entity_id"].split(".")[0]
            new_id = f"{domain}.energykart_{unique_id.removeprefix(prefix)}"
            if new_id == entity["entity_id"]:
                continue
            message_id += 1
            await ws.send_json(
                {
                    "id": message_id,
                    "type": "config/entity_registry/update",
                    "entity_id": entity["entity_id"],
                    "new_entity_id": new_id,
                }
            )
            reply = await ws.receive_json()
            if not reply.get("success"):
                raise RuntimeError(f"renaming {entity['entity_id']} failed: {reply}")


async def wait_for_state(session: aiohttp.ClientSession, base_url: str, token: str, entity_id: str) -> str:
    """Wait until the entity has a real state (not unknown or unavailable); return it."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with asyncio.timeout(STATE_SECONDS):
            while True:
                async with session.get(f"{base_url}/api/states/{entity_id}", headers=headers) as response:
                    if response.status == 200:
                        state: str = (await response.json())["state"]
                        if state not in ("unknown", "unavailable"):
                            return state
                await asyncio.sleep(0.5)
    except TimeoutError as err:
        raise TimeoutError(f"{entity_id} has no state after {STATE_SECONDS} s") from err


async def install_home(hass: HomeAssistantProcess, market: DemoMarket, username: str, password: str) -> str:
    """Onboard the running Home Assistant and set up Energy-Kart for the demo home; return the entry id."""
    async with aiohttp.ClientSession() as session:
        await hass.wait_ready(session)
        token = await onboard(session, hass.url, username, password)
        entry_id = await add_energykart(session, hass.url, token, market)
        await name_wallet_entities(session, hass.url, token, market)
        await wait_for_state(session, hass.url, token, WALLET_SENSOR)
        return entry_id


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Unwind like Ctrl-C, so Home Assistant and anvil are stopped too."""
    raise KeyboardInterrupt


def _serve(hass: HomeAssistantProcess) -> None:
    """Block until Home Assistant exits or the user presses Ctrl-C."""
    try:
        while hass.running:
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc-url", help="an anvil node to use (default: start one)")
    parser.add_argument("--port", type=int, default=8123, help="Home Assistant's HTTP port (default: 8123)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")  # noqa: S104
    parser.add_argument("--config-dir", type=Path, default=RUNTIME_DIR, help="runtime config folder (recreated)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background

    if not _port_free(args.host, args.port):
        parser.error(f"port {args.port} is in use; choose another with --port")
    anvil = None if args.rpc_url else Anvil().start()
    rpc_url: str = anvil.url if anvil else args.rpc_url
    try:
        print(f"chain: {rpc_url}")
        market = prepare_market(rpc_url)
        print(f"market: {market.contract}, demo home {market.home.address}")
        prepare_config(args.config_dir)
        with HomeAssistantProcess(args.config_dir, port=args.port, host=args.host) as hass:
            print(f"Home Assistant is starting in {args.config_dir} (log: {hass.log_file})")
            asyncio.run(install_home(hass, market, USERNAME, PASSWORD))
            print(
                f"\nEnergy-Kart dashboard: {hass.url}/lovelace/home\n"
                f"  username: {USERNAME}\n  password: {PASSWORD}\n\nCtrl-C stops Home Assistant and the chain."
            )
            _serve(hass)
    finally:
        if anvil is not None:
            anvil.stop()


if __name__ == "__main__":
    main()
