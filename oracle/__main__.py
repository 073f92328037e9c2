"""`energykart-oracle` / `python -m oracle`: run the oracle daemon until SIGTERM or SIGINT.

Exit status: 0 after a signal, 2 for configuration the operator has to fix (also when found at
start-up against the system: the database folder, the port, the contract), 1 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import aiohttp

from oracle.config import Config, ConfigError, load_config
from oracle.service import OracleService

_LOGGER = logging.getLogger("oracle")


async def _serve(config: Config) -> None:
    stopped_by: list[signal.Signals] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        stopped_by.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    async with aiohttp.ClientSession() as session:
        service = OracleService(config, session)
        try:
            starting = asyncio.create_task(service.start())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a ConfigError found against the system surfaces here
                await stopping
            else:
                starting.cancel()
            _LOGGER.info("shutting down (%s)", stopped_by[0].name if stopped_by else "stop")
        finally:
            await service.stop()
    _LOGGER.info("stopped")


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
