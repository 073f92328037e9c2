"""`energykart-oracle` / `python -m oracle`: run the oracle daemon until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import aiohttp

from oracle.config import Config, ConfigError, load_config
from oracle.service import OracleService


async def _serve(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with aiohttp.ClientSession() as session:
        service = OracleService(config, session)
        try:
            starting = asyncio.create_task(service.start())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a ConfigError found against the chain surfaces here
                await stopping
            else:
                starting.cancel()
        finally:
            await service.stop()


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = load_config(argv)
    except ConfigError as err:
        print(f"energykart-oracle: error: {err}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(config))
    except ConfigError as err:
        print(f"energykart-oracle: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
