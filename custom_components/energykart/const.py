"""Constants of the Energy-Kart integration."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Final

DOMAIN: Final = "energykart"
LOGGER = logging.getLogger(__package__)

CONF_CONTRACT_ADDRESS: Final = "contract_address"
CONF_PRIVATE_KEY: Final = "private_key"
CONF_ACCOUNT: Final = "account"
CONF_CHAIN_ID: Final = "chain_id"
CONF_CURRENCY: Final = "currency"
CONF_START_BLOCK: Final = "start_block"  # the head when the entry was set up
CONF_DEPLOYMENT_BLOCK: Final = "deployment_block"  # the market's first block: its history starts there
CONF_RPC_URL: Final = "rpc_url"
CONF_METER_ADDRESS: Final = "meter_address"
CONF_SCAN_INTERVAL: Final = "scan_interval"
CONF_SOLAR_POWER: Final = "solar_power"
CONF_HOUSE_CONSUMPTION: Final = "house_consumption"
CONF_GRID_EXPORT: Final = "grid_export"
CONF_BATTERY_SOC: Final = "battery_soc"
CONF_BATTERY_POWER: Final = "battery_power"

SOURCE_ENTITIES: Final = (
    CONF_SOLAR_POWER,
    CONF_HOUSE_CONSUMPTION,
    CONF_GRID_EXPORT,
    CONF_BATTERY_SOC,
    CONF_BATTERY_POWER,
)

DEFAULT_SCAN_INTERVAL: Final = timedelta(seconds=30)
MIN_SCAN_INTERVAL_SECONDS: Final = 5
MAX_SCAN_INTERVAL_SECONDS: Final = 3600

# The first page of open offers is fetched in every update; the count covers the rest.
OFFER_PAGE_SIZE: Final = 100
MAX_BIDDING_MINUTES: Final = 30 * 24 * 60
ZERO_ADDRESS: Final = "0x0000000000000000000000000000000000000000"
# A reorganisation replaces at most this many of the chain's last blocks: when the block the logs
# were read to has another hash, the logs of this many blocks before it are read again.
REORG_WINDOW: Final = 12

EVENT_OFFER_CREATED: Final = "energykart_offer_created"
EVENT_OUTBID: Final = "energykart_outbid"
EVENT_OFFER_AWARDED: Final = "energykart_offer_awarded"
EVENT_SETTLED: Final = "energykart_settled"
EVENT_CONNECTION_CLOSED: Final = "energykart_connection_closed"
