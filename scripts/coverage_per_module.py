"""Fail when any module of the integration is covered below the threshold (the total alone can hide
one module below it). Reads the JSON report of `coverage json`.

    python scripts/coverage_per_module.py coverage.json [--min 95] [--label ha-2025.4]
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report")
    parser.add_argument("--min", type=float, default=95.0)
    parser.add_argument("--label", default="coverage")
    args = parser.parse_args()
    with open(args.report, encoding="utf-8") as file:
        files = json.load(file)["files"]
    low = {name: data["summary"]["percent_covered"] for name, data in files.items()}
    low = {name: percent for name, percent in low.items() if percent < args.min}
    for name, percent in sorted(low.items()):
        print(f"{args.label}: {name} is covered {percent:.1f} % (< {args.min:g} %)", file=sys.stderr)
    if not low:
        print(f"{args.label}: each of {len(files)} modules is covered >= {args.min:g} %")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
