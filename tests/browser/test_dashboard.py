"""The Energy-Kart dashboard in headless Chromium: log in as a user does, read the cards, press a button."""

from __future__ import annotations

import os
import re
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from devchain.ha_demo import PASSWORD, USERNAME, HomeAssistantProcess

# Set to a path (docs/dashboard.png) to keep the screenshot; it always goes to the test's tmp dir too.
SCREENSHOT_ENV = "ENERGYKART_DASHBOARD_PNG"

# Lovelace cards render inside nested shadow roots; this reads a card's text through all of them.
DEEP_TEXT = """(element) => {
  const walk = (node) => {
    let text = node.shadowRoot ? walk(node.shadowRoot) : '';
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) text += child.textContent;
      else if (child.nodeType === Node.ELEMENT_NODE && !['STYLE', 'SCRIPT'].includes(child.tagName))
        text += ' ' + walk(child);
    }
    return text;
  };
  return walk(element).replace(/\\s+/g, ' ').trim();
}"""
CARDS = "hui-tile-card, hui-gauge-card, hui-markdown-card, hui-button-card"


def log_in(page: Page, hass: HomeAssistantProcess) -> None:
    """Open the dashboard; Home Assistant sends the browser to its login form first."""
    page.goto(f"{hass.url}/lovelace/home")
    expect(page).to_have_url(re.compile(r"/auth/authorize"))
    page.locator("input[name=username]").fill(USERNAME)
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("input[name=password]").press("Enter")
    expect(page).to_have_url(re.compile(r"/lovelace/home"))


def card(page: Page, title: str) -> Locator:
    """The card whose text starts with `title` (its name, or its first column's heading)."""
    cards = page.locator(CARDS)
    for _ in range(60):
        texts = [str(text) for text in cards.evaluate_all(f"(cards) => cards.map({DEEP_TEXT})")]
        for index, text in enumerate(texts):
            if re.match(rf"{re.escape(title)}\b", text):
                return cards.nth(index)
        page.wait_for_timeout(250)
    raise AssertionError(f"no card titled {title!r}: {texts}")


def text_of(locator: Locator) -> str:
    return str(locator.evaluate(DEEP_TEXT))


def wait_for_text(locator: Locator, pattern: str) -> str:
    """Poll the card's text (through its shadow roots) until it matches; return it."""
    page = locator.page
    for _ in range(60):
        text = text_of(locator)
        if re.fullmatch(pattern, text):
            return text
        page.wait_for_timeout(250)
    raise AssertionError(f"card text {text!r} does not match {pattern!r}")


def test_dashboard_shows_the_market(page: Page, home_assistant: HomeAssistantProcess, tmp_path: Path) -> None:
    """After logging in, every Energy-Kart card shows a value read from the chain."""
    log_in(page, home_assistant)

    eth = r"[\d,]+\.\d{6} ETH"
    wait_for_text(card(page, "Balance"), r"Balance 9,999\.\d{6} ETH")
    wait_for_text(card(page, "Open offers"), r"Open offers 4 offers")
    wait_for_text(card(page, "Best price"), r"Best price 0\.000047000 ETH/kWh")
    wait_for_text(card(page, "Highest bid on my offer"), r"Highest bid on my offer 0\.000056000 ETH/kWh")
    for title in ("Credit", "Escrow", "Earnings", "Spending"):
        wait_for_text(card(page, title), rf"{title} {eth}")
    wait_for_text(card(page, "Sold"), r"Sold 1\.100 kWh")
    wait_for_text(card(page, "Bought"), r"Bought 0\.800 kWh")
    # Surplus: 4200 W of solar power less 1350 W of consumption, from the helper sensors.
    wait_for_text(page.locator("hui-gauge-card").first, r"2,850 W Solar surplus")
    wait_for_text(page.locator("hui-gauge-card").nth(1), r"76(\.0)?\s?% Battery")
    offers = wait_for_text(card(page, "Offers open for bids"), r"Offers open for bids .*")
    assert re.search(r"#5 2\.5 0\.000047 \d\d:\d\d", offers), offers
    assert "#6 (mine)" in offers
    connections = wait_for_text(card(page, "Connection"), r"Connection .*")
    assert re.search(r"#1 \(buying\) 0\.8 kWh 0\.000048 delivering", connections), connections
    assert re.search(r"#2 \(selling\) 1\.1 kWh 0\.000042 delivering", connections), connections

    texts = [text_of(element) for element in page.locator(CARDS).all()]
    assert len(texts) >= 17
    assert not [text for text in texts if re.search(r"unavailable|unknown|entity not available", text, re.I)]

    page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    if target := os.environ.get(SCREENSHOT_ENV):
        page.screenshot(path=target, full_page=True)


def test_bid_button_bids_on_the_cheapest_offer(page: Page, home_assistant: HomeAssistantProcess) -> None:
    """The dashboard's button runs the action: the bid's escrow shows in the wallet."""
    log_in(page, home_assistant)
    escrow = card(page, "Escrow")
    # What is left of connection 1's escrow: 2 kWh at 48,000 gwei, 0.8 kWh of it paid.
    wait_for_text(escrow, r"Escrow 0\.000058 ETH")

    card(page, "Bid on best offer").click()
    page.get_by_role("button", name="OK").click()

    # Plus 2.5 kWh of offer #5 at its start price, 47,000 gwei per kWh.
    wait_for_text(escrow, r"Escrow 0\.000175 ETH")
    wait_for_text(card(page, "Best price"), r"Best price 0\.000047001 ETH/kWh")


def test_home_assistant_logged_no_errors(home_assistant: HomeAssistantProcess) -> None:
    errors = [line for line in home_assistant.log_file.read_text().splitlines() if " ERROR " in line]
    assert errors == []
