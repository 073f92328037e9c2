"""Config flow: the market's currency, every error, duplicates, reauthentication, reconfiguration and options."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import pytest
from homeassistant.config_entries import SOURCE_USER, ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType

import custom_components.energykart as integration
from custom_components.energykart.const import (
    CONF_ACCOUNT,
    CONF_CONTRACT_ADDRESS,
    CONF_CURRENCY,
    CONF_GRID_EXPORT,
    CONF_METER_ADDRESS,
    CONF_PRIVATE_KEY,
    CONF_RPC_URL,
    CONF_SCAN_INTERVAL,
    DOMAIN,
)
from custom_components.energykart.tariffs import (
    CONF_BATTERY_CAPACITY,
    CONF_BATTERY_RESERVE,
    CONF_DAILY_BUDGET,
    CONF_EXCHANGE_RATE_ENTITY,
    CONF_FEED_IN_PRICE_ENTITY,
    CONF_MARGIN,
    CONF_MAX_OFFER_ENERGY,
    CONF_RETAIL_PRICE,
)
from devchain.anvil import Anvil, free_port
from devchain.deploy import deploy_token
from tests.chain import Chain

from .conftest import BUYER, RIVAL, SELLER, make_chain, make_token_market, market_entry, reported_meter, setup_entry


def key_hex(account: Any) -> str:
    return "0x" + bytes(account.key).hex()


async def start(hass: HomeAssistant, user_input: dict[str, Any]) -> Any:
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.FORM
    return await hass.config_entries.flow.async_configure(result["flow_id"], user_input)


async def confirm(hass: HomeAssistant, result: Any, step_id: str = "confirm_native") -> Any:
    """Confirm the market's currency, shown in step `step_id`."""
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == step_id
    return await hass.config_entries.flow.async_configure(result["flow_id"], {})


async def test_create_trading_entry(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """A private key makes a trading entry, unique per chain, contract and account, once the
    user has seen that the market settles in the chain's native coin."""
    meter = reported_meter(chain, SELLER.address)
    result = await start(
        hass,
        {
            CONF_RPC_URL: anvil.url,
            CONF_CONTRACT_ADDRESS: chain.market.address.lower(),
            CONF_PRIVATE_KEY: key_hex(SELLER),
            CONF_METER_ADDRESS: meter.address,
            CONF_GRID_EXPORT: "sensor.grid_export",
        },
    )
    assert result["step_id"] == "confirm_native"
    assert result["description_placeholders"] == {"symbol": "ETH", "contract": chain.market.address}
    result = await confirm(hass, result)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "Energy-Kart 0x71bE…5788"
    assert result["data"][CONF_ACCOUNT] == SELLER.address
    assert result["data"][CONF_CONTRACT_ADDRESS] == chain.market.address
    assert result["data"][CONF_CURRENCY] == {"symbol": "ETH", "decimals": 18, "token": None}
    assert result["options"] == {
        CONF_SCAN_INTERVAL: 30,
        CONF_GRID_EXPORT: "sensor.grid_export",
        CONF_METER_ADDRESS: meter.address,
    }
    assert result["result"].unique_id == f"31337_{chain.market.address.lower()}_{SELLER.address.lower()}"

    again = await start(
        hass, {CONF_RPC_URL: anvil.url, CONF_CONTRACT_ADDRESS: chain.market.address, CONF_ACCOUNT: SELLER.address}
    )
    assert again["type"] is FlowResultType.ABORT
    assert again["reason"] == "already_configured"


async def test_create_watch_only_entry(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """An address alone makes a watch-only entry."""
    result = await start(
        hass, {CONF_RPC_URL: anvil.url, CONF_CONTRACT_ADDRESS: chain.market.address, CONF_ACCOUNT: RIVAL.address}
    )
    result = await confirm(hass, result)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert CONF_PRIVATE_KEY not in result["data"]


async def test_token_market_shows_its_currency(hass: HomeAssistant, anvil: Anvil) -> None:
    """A market settling in a token shows the token's symbol, address and decimals before the
    entry is made, and the entry keeps them."""
    market = make_token_market(anvil.url, decimals=6)
    result = await start(
        hass,
        {
            CONF_RPC_URL: anvil.url,
            CONF_CONTRACT_ADDRESS: market.chain.market.address,
            CONF_PRIVATE_KEY: key_hex(BUYER),
        },
    )
    assert result["step_id"] == "confirm_token"
    assert result["description_placeholders"] == {
        "symbol": "EURe",
        "decimals": "6",
        "token": market.token.address,
        "contract": market.chain.market.address,
    }
    result = await confirm(hass, result, "confirm_token")
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"][CONF_CURRENCY] == {"symbol": "EURe", "decimals": 6, "token": market.token.address}
    await hass.async_block_till_done()
    balance = hass.states.get("sensor.energy_kart_0xfabb_694a_wallet_balance")
    assert balance is not None
    assert (balance.state, balance.attributes["unit_of_measurement"]) == ("1000.0", "EURe")


async def test_currency_not_a_token(hass: HomeAssistant, anvil: Anvil) -> None:
    """A market whose currency does not answer as an ERC-20 token (here: another market), or
    answers with no symbol, is refused with its own error."""
    other = make_chain(anvil.url)
    not_a_token = make_chain(anvil.url, currency=other.market.address)
    no_symbol = deploy_token(other.w3, other.registrar, symbol=" ")
    blank = make_chain(anvil.url, currency=no_symbol.address)
    for market in (not_a_token, blank):
        result = await start(
            hass, {CONF_RPC_URL: anvil.url, CONF_CONTRACT_ADDRESS: market.market.address, CONF_ACCOUNT: RIVAL.address}
        )
        assert result["errors"] == {CONF_CONTRACT_ADDRESS: "unsupported_currency"}


@pytest.mark.parametrize(
    ("override", "errors"),
    [
        ({CONF_RPC_URL: "http://127.0.0.1:{free}"}, {"base": "cannot_connect"}),
        ({CONF_CONTRACT_ADDRESS: "{registrar}"}, {CONF_CONTRACT_ADDRESS: "no_contract"}),
        ({CONF_CONTRACT_ADDRESS: "{meter}"}, {CONF_CONTRACT_ADDRESS: "no_contract"}),
        ({CONF_CONTRACT_ADDRESS: "not an address"}, {CONF_CONTRACT_ADDRESS: "invalid_address"}),
        ({CONF_PRIVATE_KEY: "0x1234"}, {CONF_PRIVATE_KEY: "invalid_private_key"}),
        ({CONF_PRIVATE_KEY: "", CONF_ACCOUNT: ""}, {"base": "account_required"}),
        ({CONF_PRIVATE_KEY: "", CONF_ACCOUNT: "0xabc"}, {CONF_ACCOUNT: "invalid_address"}),
        ({CONF_ACCOUNT: "{buyer}"}, {CONF_ACCOUNT: "key_account_mismatch"}),
        ({CONF_METER_ADDRESS: "meter"}, {CONF_METER_ADDRESS: "invalid_address"}),
        ({CONF_METER_ADDRESS: "{meter}"}, {CONF_METER_ADDRESS: "meter_not_owned"}),
    ],
)
async def test_user_errors(
    hass: HomeAssistant, chain: Chain, anvil: Anvil, override: dict[str, str], errors: dict[str, str]
) -> None:
    """Each check gives a translated form error, and the form can then be completed."""
    meter = reported_meter(chain, BUYER.address)
    values = {"free": free_port(), "registrar": chain.registrar, "buyer": BUYER.address, "meter": meter.address}
    good = {CONF_RPC_URL: anvil.url, CONF_CONTRACT_ADDRESS: chain.market.address, CONF_PRIVATE_KEY: key_hex(SELLER)}
    user_input = {**good, **{key: value.format(**values) for key, value in override.items()}}
    result = await start(hass, user_input)
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == errors

    result = await confirm(hass, await hass.config_entries.flow.async_configure(result["flow_id"], good))
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_wrong_contract(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """A contract that is not a market is refused."""
    # Any contract bytecode that does not answer the market's identity calls.
    chain.w3.provider.make_request("anvil_setCode", [BUYER.address, "0x600160005260206000f3"])  # type: ignore[arg-type]
    try:
        result = await start(
            hass, {CONF_RPC_URL: anvil.url, CONF_CONTRACT_ADDRESS: BUYER.address, CONF_ACCOUNT: RIVAL.address}
        )
    finally:
        chain.w3.provider.make_request("anvil_setCode", [BUYER.address, "0x"])  # type: ignore[arg-type]
    assert result["errors"] == {CONF_CONTRACT_ADDRESS: "wrong_contract"}


async def test_reauth(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """Reauthentication takes a key of the same account, and turns a watch-only entry into a trading one."""
    entry = await setup_entry(hass, market_entry(chain, anvil.url, SELLER, trading=False))
    assert hass.states.get("button.energy_kart_0x71be_5788_withdraw_credit") is None
    result = await entry.start_reauth_flow(hass)
    assert result["step_id"] == "reauth_confirm"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_PRIVATE_KEY: "nope"})
    assert result["errors"] == {CONF_PRIVATE_KEY: "invalid_private_key"}
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_PRIVATE_KEY: key_hex(BUYER)})
    assert result["errors"] == {CONF_PRIVATE_KEY: "wrong_account"}
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_PRIVATE_KEY: key_hex(SELLER)})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reauth_successful"
    await hass.async_block_till_done()
    assert entry.data[CONF_PRIVATE_KEY] == key_hex(SELLER)
    assert hass.states.get("button.energy_kart_0x71be_5788_withdraw_credit") is not None


async def test_reconfigure(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """An entry whose node moved is pointed at a node of the same chain, then loads."""
    entry = market_entry(chain, f"http://127.0.0.1:{free_port()}", SELLER)
    entry.add_to_hass(hass)
    await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_RETRY
    result = await entry.start_reconfigure_flow(hass)
    assert result["step_id"] == "reconfigure"
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_RPC_URL: f"http://127.0.0.1:{free_port()}"}
    )
    assert result["errors"] == {"base": "cannot_connect"}
    with Anvil(chain_id=4242) as other:
        result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_RPC_URL: other.url})
    assert result["errors"] == {CONF_RPC_URL: "wrong_chain"}
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_RPC_URL: anvil.url})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    await hass.async_block_till_done()
    assert entry.data[CONF_RPC_URL] == anvil.url
    assert entry.state is ConfigEntryState.LOADED  # type: ignore[comparison-overlap]


async def test_options(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """Options change the poll interval, the meter and the sources; a bad meter is refused."""
    entry = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    meter = reported_meter(chain, SELLER.address)
    foreign = reported_meter(chain, BUYER.address)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert result["step_id"] == "init"
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {CONF_SCAN_INTERVAL: 60, CONF_METER_ADDRESS: "0x12"}
    )
    assert result["errors"] == {CONF_METER_ADDRESS: "invalid_address"}
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {CONF_SCAN_INTERVAL: 60, CONF_METER_ADDRESS: foreign.address}
    )
    assert result["errors"] == {CONF_METER_ADDRESS: "meter_not_owned"}
    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        {CONF_SCAN_INTERVAL: 60, CONF_METER_ADDRESS: meter.address.lower(), CONF_GRID_EXPORT: "sensor.export"},
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert entry.options == {
        CONF_SCAN_INTERVAL: 60,
        CONF_METER_ADDRESS: meter.address,
        CONF_GRID_EXPORT: "sensor.export",
    }
    assert entry.runtime_data.update_interval is not None
    assert entry.runtime_data.update_interval.total_seconds() == 60


async def test_each_flow_reloads_the_entry_once(
    hass: HomeAssistant, chain: Chain, anvil: Anvil, caplog: pytest.LogCaptureFixture
) -> None:
    """Reauthentication, reconfiguration and new options each change the entry and set it up again
    exactly once; unchanged options do not; and Home Assistant reports nothing about how it is
    reloaded (2026.x reports an update listener next to async_update_reload_and_abort)."""
    entry = await setup_entry(hass, market_entry(chain, anvil.url, SELLER, trading=False))
    setups: list[str] = []
    set_up = integration.async_setup_entry

    async def counted(hass: HomeAssistant, entry: Any) -> bool:
        setups.append(entry.entry_id)
        return await set_up(hass, entry)

    async def finish(result: Any, flow: Any, user_input: dict[str, Any]) -> Any:
        result = await flow.async_configure(result["flow_id"], user_input)
        await hass.async_block_till_done()
        return result

    with patch.object(integration, "async_setup_entry", counted):
        result = await finish(
            await entry.start_reauth_flow(hass), hass.config_entries.flow, {CONF_PRIVATE_KEY: key_hex(SELLER)}
        )
        assert result["reason"] == "reauth_successful"
        assert entry.data[CONF_PRIVATE_KEY] == key_hex(SELLER)
        assert len(setups) == 1

        same_node = f"{anvil.url}/"
        result = await finish(
            await entry.start_reconfigure_flow(hass), hass.config_entries.flow, {CONF_RPC_URL: same_node}
        )
        assert result["reason"] == "reconfigure_successful"
        assert entry.data[CONF_RPC_URL] == same_node
        assert len(setups) == 2

        options = hass.config_entries.options
        result = await finish(await options.async_init(entry.entry_id), options, {CONF_SCAN_INTERVAL: 45})
        assert result["type"] is FlowResultType.CREATE_ENTRY
        assert len(setups) == 3
        assert entry.runtime_data.update_interval.total_seconds() == 45

        await finish(await options.async_init(entry.entry_id), options, {CONF_SCAN_INTERVAL: 45})
        assert len(setups) == 3
    assert setups == [entry.entry_id] * 3
    assert entry.state is ConfigEntryState.LOADED
    assert [record.getMessage() for record in caplog.records if record.name == "homeassistant.helpers.frame"] == []


async def test_options_tariffs_and_autopilot(hass: HomeAssistant, chain: Chain, anvil: Anvil) -> None:
    """The retail price fixed, the feed-in price from an entity, the ETH price entity and the
    autopilot's choices are kept; the form suggests the defaults."""
    entry = await setup_entry(hass, market_entry(chain, anvil.url, SELLER))
    result = await hass.config_entries.options.async_init(entry.entry_id)
    schema = result["data_schema"]
    assert schema is not None
    suggested = {str(key): key.description for key in schema.schema}
    assert suggested[CONF_RETAIL_PRICE] == {"suggested_value": 0.30}
    assert suggested[CONF_MARGIN] == {"suggested_value": 0.07}
    result = await hass.config_entries.options.async_configure(
        result["flow_id"],
        {
            CONF_SCAN_INTERVAL: 30,
            CONF_RETAIL_PRICE: 0.32,
            CONF_FEED_IN_PRICE_ENTITY: "sensor.nordpool_feed_in",
            CONF_EXCHANGE_RATE_ENTITY: "sensor.eth_eur",
            CONF_BATTERY_RESERVE: 0,
            CONF_BATTERY_CAPACITY: 10,
            CONF_MARGIN: 0.05,
            CONF_DAILY_BUDGET: 3,
            CONF_MAX_OFFER_ENERGY: 2.5,
        },
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert entry.options == {
        CONF_SCAN_INTERVAL: 30,
        CONF_RETAIL_PRICE: 0.32,
        CONF_FEED_IN_PRICE_ENTITY: "sensor.nordpool_feed_in",
        CONF_EXCHANGE_RATE_ENTITY: "sensor.eth_eur",
        CONF_BATTERY_RESERVE: 0,
        CONF_BATTERY_CAPACITY: 10,
        CONF_MARGIN: 0.05,
        CONF_DAILY_BUDGET: 3,
        CONF_MAX_OFFER_ENERGY: 2.5,
    }
