"""Home Assistant with the Energy-Kart integration on a real chain, and headless Chromium to look at it.

Chromium is Debian's (`/usr/bin/chromium`), installed here with apt-get when it is missing;
Playwright drives it, and never downloads a browser of its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, ViewportSize, sync_playwright

from devchain.anvil import Anvil
from devchain.ha_demo import (
    PASSWORD,
    USERNAME,
    DemoMarket,
    HomeAssistantProcess,
    install_home,
    prepare_config,
    prepare_market,
)

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling Google's hosts, which this
# network refuses; a fresh profile per run comes with Playwright's own user data dir.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1500, "height": 1100}


def _install_chromium() -> None:
    """apt-get install Debian's chromium (CI runs as root on a fresh machine)."""
    if CHROMIUM.exists():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("the dashboard test needs Debian's chromium (/usr/bin/chromium) and apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "update", "-qq"], check=True, env=env)
    subprocess.run([apt, "install", "-y", "-qq", "chromium"], check=True, env=env)


@pytest.fixture(scope="session")
def market(anvil: Anvil) -> DemoMarket:
    """The demo market: connections with energy delivered, open offers, bids."""
    return prepare_market(anvil.url)


@pytest.fixture(scope="session")
def home_assistant(market: DemoMarket, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistantProcess]:
    """`hass` on a free port with a temporary copy of ha-config/, onboarded, Energy-Kart set up."""
    config_dir = tmp_path_factory.mktemp("home-assistant") / "config"
    prepare_config(config_dir)
    with HomeAssistantProcess(config_dir) as hass:
        asyncio.run(install_home(hass, market, USERNAME, PASSWORD))
        yield hass


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    _install_chromium()
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page of a fresh browser context (no session cookie, no stored token)."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-US")
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()
