"""Config flow: node, market contract and account, each checked before the entry is made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Literal

import voluptuous as vol
from eth_account import Account
from homeassistant.config_entries import ConfigFlow, ConfigFlowResult, OptionsFlow
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.selector import (
    EntitySelector,
    EntitySelectorConfig,
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    TextSelector,
    TextSelectorConfig,
    TextSelectorType,
)
from web3 import Web3

from .client import EnergyKartClient, is_private_key
from .const import (
    CONF_ACCOUNT,
    CONF_BATTERY_POWER,
    CONF_BATTERY_SOC,
    CONF_CHAIN_ID,
    CONF_CONTRACT_ADDRESS,
    CONF_CURRENCY,
    CONF_GRID_EXPORT,
    CONF_HOUSE_CONSUMPTION,
    CONF_METER_ADDRESS,
    CONF_PRIVATE_KEY,
    CONF_RPC_URL,
    CONF_SCAN_INTERVAL,
    CONF_SOLAR_POWER,
    CONF_START_BLOCK,
    DEFAULT_SCAN_INTERVAL,
    DOMAIN,
    MAX_SCAN_INTERVAL_SECONDS,
    MIN_SCAN_INTERVAL_SECONDS,
    SOURCE_ENTITIES,
)
from .currency import Currency
from .errors import EnergyKartConnectionError, NoContractError, UnsupportedCurrencyError, WrongContractError
from .tariffs import (
    CONF_BATTERY_CAPACITY,
    CONF_BATTERY_RESERVE,
    CONF_DAILY_BUDGET,
    CONF_EXCHANGE_RATE_ENTITY,
    CONF_FEED_IN_PRICE,
    CONF_FEED_IN_PRICE_ENTITY,
    CONF_MARGIN,
    CONF_MAX_OFFER_ENERGY,
    CONF_RETAIL_PRICE,
    CONF_RETAIL_PRICE_ENTITY,
    DEFAULTS,
    TARIFF_OPTIONS,
)

_URL = TextSelector(TextSelectorConfig(type=TextSelectorType.URL))
_TEXT = TextSelector()
_SECRET = TextSelector(TextSelectorConfig(type=TextSelectorType.PASSWORD))
_POWER = EntitySelector(EntitySelectorConfig(domain="sensor", device_class="power"))
_SOURCE_SELECTORS = {
    CONF_SOLAR_POWER: _POWER,
    CONF_HOUSE_CONSUMPTION: _POWER,
    CONF_GRID_EXPORT: _POWER,
    CONF_BATTERY_SOC: EntitySelector(EntitySelectorConfig(domain="sensor", device_class="battery")),
    CONF_BATTERY_POWER: _POWER,
}
_SOURCES_SCHEMA: dict[vol.Marker, Any] = {vol.Optional(key): selector for key, selector in _SOURCE_SELECTORS.items()}

USER_SCHEMA = vol.Schema(
    {
        vol.Required(CONF_RPC_URL): _URL,
        vol.Required(CONF_CONTRACT_ADDRESS): _TEXT,
        vol.Optional(CONF_PRIVATE_KEY): _SECRET,
        vol.Optional(CONF_ACCOUNT): _TEXT,
        vol.Optional(CONF_METER_ADDRESS): _TEXT,
        **_SOURCES_SCHEMA,
    }
)


def _number(low: float, high: float, step: float | Literal["any"], unit: str) -> NumberSelector:
    return NumberSelector(
        NumberSelectorConfig(min=low, max=high, step=step, unit_of_measurement=unit, mode=NumberSelectorMode.BOX)
    )


def _tariff_schema(currency: str) -> dict[vol.Marker, Any]:
    """The tariffs (a fixed price, or a price entity that overrides it), the exchange rate and the autopilot."""
    price = _number(0, 10, "any", f"{currency}/kWh")
    sensor = EntitySelector(EntitySelectorConfig(domain="sensor"))
    return {
        vol.Optional(CONF_RETAIL_PRICE): price,
        vol.Optional(CONF_RETAIL_PRICE_ENTITY): sensor,
        vol.Optional(CONF_FEED_IN_PRICE): price,
        vol.Optional(CONF_FEED_IN_PRICE_ENTITY): sensor,
        vol.Optional(CONF_EXCHANGE_RATE_ENTITY): sensor,
        vol.Optional(CONF_BATTERY_RESERVE): _number(0, 100, 1, "%"),
        vol.Optional(CONF_BATTERY_CAPACITY): _number(0, 1000, "any", "kWh"),
        vol.Optional(CONF_MARGIN): price,
        vol.Optional(CONF_DAILY_BUDGET): _number(0, 10000, "any", currency),
        vol.Optional(CONF_MAX_OFFER_ENERGY): _number(0.01, 1000, "any", "kWh"),
    }


def short_address(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def _account(user_input: Mapping[str, Any], errors: dict[str, str]) -> str | None:
    """The account the entry acts for, from the key or the watch-only address."""
    key = user_input.get(CONF_PRIVATE_KEY, "").strip()
    address = user_input.get(CONF_ACCOUNT, "").strip()
    if key:
        if not is_private_key(key):
            errors[CONF_PRIVATE_KEY] = "invalid_private_key"
            return None
        derived = str(Account.from_key(key).address)
        if address and (not Web3.is_address(address) or Web3.to_checksum_address(address) != derived):
            errors[CONF_ACCOUNT] = "key_account_mismatch"
            return None
        return derived
    if not address:
        errors["base"] = "account_required"
        return None
    if not Web3.is_address(address):
        errors[CONF_ACCOUNT] = "invalid_address"
        return None
    return str(Web3.to_checksum_address(address))


async def _check_market(
    hass: HomeAssistant,
    rpc_url: str,
    contract: str,
    account: str,
    meter: str | None,
    errors: dict[str, str],
    chain_id: int | None = None,
) -> tuple[int, int, Currency] | None:
    """Check node, chain, contract, currency and meter; return (chain id, current block, currency)
    or None with errors set."""
    client = EnergyKartClient(async_get_clientsession(hass), rpc_url, contract, account)
    try:
        if chain_id is not None and await client.chain_id() != chain_id:
            errors[CONF_RPC_URL] = "wrong_chain"
            return None
        chain_id = await client.validate()
        currency = await client.load_currency()
        block = await client.block_number()
        if meter and await client.meter_owner(meter) != account:
            errors[CONF_METER_ADDRESS] = "meter_not_owned"
            return None
    except EnergyKartConnectionError:
        errors["base"] = "cannot_connect"
        return None
    except NoContractError:
        errors[CONF_CONTRACT_ADDRESS] = "no_contract"
        return None
    except WrongContractError:
        errors[CONF_CONTRACT_ADDRESS] = "wrong_contract"
        return None
    except UnsupportedCurrencyError:
        errors[CONF_CONTRACT_ADDRESS] = "unsupported_currency"
        return None
    return chain_id, block, currency


def _meter(user_input: Mapping[str, Any], errors: dict[str, str]) -> str | None:
    meter = user_input.get(CONF_METER_ADDRESS, "").strip()
    if not meter:
        return None
    if not Web3.is_address(meter):
        errors[CONF_METER_ADDRESS] = "invalid_address"
        return None
    return str(Web3.to_checksum_address(meter))


class EnergyKartConfigFlow(ConfigFlow, domain=DOMAIN):
    """Set up an Energy-Kart wallet."""

    VERSION = 1

    def __init__(self) -> None:
        self._pending: tuple[str, dict[str, Any], dict[str, Any]] | None = None  # title, data, options

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the node, the market and the account."""
        errors: dict[str, str] = {}
        if user_input is not None:
            contract = user_input[CONF_CONTRACT_ADDRESS].strip()
            if not Web3.is_address(contract):
                errors[CONF_CONTRACT_ADDRESS] = "invalid_address"
            account = _account(user_input, errors)
            meter = _meter(user_input, errors)
            if not errors and account is not None:
                contract = str(Web3.to_checksum_address(contract))
                checked = await _check_market(self.hass, user_input[CONF_RPC_URL], contract, account, meter, errors)
                if checked is not None:
                    chain_id, block, currency = checked
                    await self.async_set_unique_id(f"{chain_id}_{contract.lower()}_{account.lower()}")
                    self._abort_if_unique_id_configured()
                    data = {
                        CONF_RPC_URL: user_input[CONF_RPC_URL],
                        CONF_CONTRACT_ADDRESS: contract,
                        CONF_ACCOUNT: account,
                        CONF_CHAIN_ID: chain_id,
                        CONF_START_BLOCK: block,
                        CONF_CURRENCY: asdict(currency),
                    }
                    if key := user_input.get(CONF_PRIVATE_KEY, "").strip():
                        data[CONF_PRIVATE_KEY] = key
                    options: dict[str, Any] = {
                        CONF_SCAN_INTERVAL: int(DEFAULT_SCAN_INTERVAL.total_seconds()),
                        **{key: user_input[key] for key in SOURCE_ENTITIES if user_input.get(key)},
                    }
                    if meter:
                        options[CONF_METER_ADDRESS] = meter
                    self._pending = (f"Energy-Kart {short_address(account)}", data, options)
                    return await (
                        self.async_step_confirm_native() if currency.is_native else self.async_step_confirm_token()
                    )
        return self.async_show_form(
            step_id="user",
            data_schema=self.add_suggested_values_to_schema(USER_SCHEMA, user_input),
            errors=errors,
        )

    async def async_step_confirm_native(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Show that the market settles in the chain's native coin."""
        return self._confirm("confirm_native", user_input)

    async def async_step_confirm_token(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Show the token the market settles in."""
        return self._confirm("confirm_token", user_input)

    def _confirm(self, step_id: str, user_input: dict[str, Any] | None) -> ConfigFlowResult:
        """Show the market's currency; make the entry once the user confirms."""
        assert self._pending is not None, "the user step comes first"
        title, data, options = self._pending
        if user_input is not None:
            return self.async_create_entry(title=title, data=data, options=options)
        currency = data[CONF_CURRENCY]
        placeholders = {"symbol": currency["symbol"], "contract": data[CONF_CONTRACT_ADDRESS]}
        if currency["token"] is not None:
            placeholders |= {"token": currency["token"], "decimals": str(currency["decimals"])}
        return self.async_show_form(step_id=step_id, data_schema=vol.Schema({}), description_placeholders=placeholders)

    async def async_step_reauth(self, entry_data: Mapping[str, Any]) -> ConfigFlowResult:
        """Start re-authentication: a new private key for the same account."""
        return await self.async_step_reauth_confirm()

    async def async_step_reauth_confirm(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the account's private key."""
        entry = self._get_reauth_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            key = user_input[CONF_PRIVATE_KEY].strip()
            if not is_private_key(key):
                errors[CONF_PRIVATE_KEY] = "invalid_private_key"
            elif Account.from_key(key).address != entry.data[CONF_ACCOUNT]:
                errors[CONF_PRIVATE_KEY] = "wrong_account"
            else:
                return self.async_update_reload_and_abort(entry, data_updates={CONF_PRIVATE_KEY: key})
        return self.async_show_form(
            step_id="reauth_confirm",
            data_schema=vol.Schema({vol.Required(CONF_PRIVATE_KEY): _SECRET}),
            description_placeholders={"account": short_address(entry.data[CONF_ACCOUNT])},
            errors=errors,
        )

    async def async_step_reconfigure(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Point the entry at another node of the same chain."""
        entry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            checked = await _check_market(
                self.hass,
                user_input[CONF_RPC_URL],
                entry.data[CONF_CONTRACT_ADDRESS],
                entry.data[CONF_ACCOUNT],
                None,
                errors,
                entry.data[CONF_CHAIN_ID],
            )
            if checked is not None:
                return self.async_update_reload_and_abort(entry, data_updates={CONF_RPC_URL: user_input[CONF_RPC_URL]})
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(
                vol.Schema({vol.Required(CONF_RPC_URL): _URL}), user_input or entry.data
            ),
            errors=errors,
        )

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: Any) -> EnergyKartOptionsFlow:
        """The options flow."""
        return EnergyKartOptionsFlow()


class EnergyKartOptionsFlow(OptionsFlow):
    """Poll interval, meter, source entities, tariffs and the autopilot."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Change the options."""
        errors: dict[str, str] = {}
        entry = self.config_entry
        if user_input is not None:
            meter = _meter(user_input, errors)
            if meter and not errors:
                await _check_market(
                    self.hass,
                    entry.data[CONF_RPC_URL],
                    entry.data[CONF_CONTRACT_ADDRESS],
                    entry.data[CONF_ACCOUNT],
                    meter,
                    errors,
                )
            if not errors:
                options: dict[str, Any] = {
                    CONF_SCAN_INTERVAL: int(user_input[CONF_SCAN_INTERVAL]),
                    **{key: user_input[key] for key in SOURCE_ENTITIES if user_input.get(key)},
                    **{key: user_input[key] for key in TARIFF_OPTIONS if key in user_input},
                }
                if meter:
                    options[CONF_METER_ADDRESS] = meter
                # The entry has no update listener (next to async_update_reload_and_abort in the
                # other flows, Home Assistant 2026.6+ reports one): new options take effect by one
                # reload, scheduled here when they changed.
                if self.hass.config_entries.async_update_entry(entry, options=options):
                    self.hass.config_entries.async_schedule_reload(entry.entry_id)
                return self.async_create_entry(data=options)
        schema = vol.Schema(
            {
                vol.Required(CONF_SCAN_INTERVAL): NumberSelector(
                    NumberSelectorConfig(
                        min=MIN_SCAN_INTERVAL_SECONDS,
                        max=MAX_SCAN_INTERVAL_SECONDS,
                        step=1,
                        unit_of_measurement="s",
                        mode=NumberSelectorMode.BOX,
                    )
                ),
                vol.Optional(CONF_METER_ADDRESS): _TEXT,
                **_SOURCES_SCHEMA,
                **_tariff_schema(self.hass.config.currency),
            }
        )
        return self.async_show_form(
            step_id="init",
            data_schema=self.add_suggested_values_to_schema(schema, user_input or {**DEFAULTS, **entry.options}),
            errors=errors,
        )
