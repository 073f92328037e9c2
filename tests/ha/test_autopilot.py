"""The autopilot's rules in the Home Assistant test run, so that the integration's coverage (per
module, >= 95 %) counts its pure trading module.

The rules are tested in tests/demo/test_autopilot.py, where the demo loads the file without Home
Assistant; every one of those tests runs here again unchanged (but the one that checks Home
Assistant is absent), and the integration's own import path must give that very file.
"""

from __future__ import annotations

from pathlib import Path

from custom_components.energykart import autopilot
from energykart_demo.strategy import AUTOPILOT_PATH, load_autopilot
from tests.demo import test_autopilot as rules

HOME_ASSISTANT_ABSENT = "test_it_loads_without_home_assistant"
globals().update(
    {name: test for name, test in vars(rules).items() if name.startswith("test_") and name != HOME_ASSISTANT_ABSENT}
)


def test_the_integration_and_the_demo_share_one_autopilot() -> None:
    assert Path(autopilot.__file__).resolve() == AUTOPILOT_PATH
    assert load_autopilot().decide.__doc__ == autopilot.decide.__doc__
