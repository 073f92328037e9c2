"""`python -m energykart_demo`: says what to install when the demo's extra is missing, then runs it
(energykart_demo/cli.py)."""

import importlib.util
import sys

MISSING = [name for name in ("rich", "matplotlib") if importlib.util.find_spec(name) is None]
if MISSING:
    sys.exit(f"energykart_demo needs its extra ({', '.join(MISSING)} missing): pip install '.[demo]'")

from energykart_demo.cli import main  # noqa: E402 - only once the extra is known to be there

main()
