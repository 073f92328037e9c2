"""A short soak (bench/soak.py): half a minute of signed readings from 20 meters, the node restarted
once and the oracle killed once; no accepted reading lost, none settled twice. `make soak` runs
the long one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import main as soak


def test_short_soak_loses_nothing_and_settles_nothing_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = soak(["--minutes", "0.4", "--meters", "20", "--node-restarts", "1", "--oracle-kills", "1",
                   "--node-downtime", "2", "--workdir", str(tmp_path)])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    assert (report["node_restarts"], report["oracle_kills"]) == (1, 1)
    assert report["accepted"] > 0
    assert report["settled_on_chain"] > 0
    assert report["lost"] == 0
    assert report["settled_twice"] == 0
    assert report["rejected"] == {}
