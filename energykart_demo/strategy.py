"""The integration's autopilot (`custom_components/energykart/autopilot.py`), loaded by its path.

There is one trading strategy, and it lives in the Home Assistant integration, which HACS installs
on its own. Importing it as `custom_components.energykart.autopilot` would first run the
integration's `__init__`, which imports Home Assistant; the autopilot needs only the standard
library, so the demo loads the file itself and runs without Home Assistant installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

# A link to custom_components/energykart/autopilot.py in the repository, a copy of it in the wheel
# (package data: `pip install .` ships energykart_demo, not the integration).
AUTOPILOT_PATH = (Path(__file__).parent / "_shared" / "autopilot.py").resolve()
MODULE_NAME = "energykart_autopilot"


def load_autopilot() -> ModuleType:
    """The autopilot module, loaded once (registered in sys.modules, as its dataclasses need)."""
    loaded = sys.modules.get(MODULE_NAME)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(MODULE_NAME, AUTOPILOT_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the autopilot from {AUTOPILOT_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from custom_components.energykart import autopilot
else:
    autopilot = load_autopilot()

__all__ = ["AUTOPILOT_PATH", "autopilot", "load_autopilot"]
