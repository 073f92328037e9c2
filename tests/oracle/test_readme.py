"""README "Run the oracle", pasted as it is: its shell block runs in a network namespace of its own
(so its fixed ports 8545 and 8787 are free, and nothing of it outlives the test: the namespace's
first process is a PID 1 whose exit ends the others), and the meter's reading is settled.

Only the `pip install .` line is left out: the project is installed in the venv that runs this
test, and tests/oracle/test_packaging.py installs it with `pip install .` into a fresh venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.oracle.conftest import REPO_ROOT

METER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
# Waits on the quickstart's own processes, not a speed check: a settle comes one timestep (30 s)
# after the first reading; the limit only keeps a broken quickstart from hanging the suite.
WAIT_SECONDS = 240


def quickstart() -> str:
    """The first shell block under "## Run the oracle", without its `pip install .` line."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Run the oracle", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "README: no ```sh block under 'Run the oracle'"
    lines = block.group(1).splitlines()
    assert lines[0].startswith("pip install .")
    return "\n".join(lines[1:]) + "\n"


CHECK = f"""
for _ in $(seq {WAIT_SECONDS}); do
  if answer=$(curl -sf http://127.0.0.1:8787/v1/meters/{METER}) \\
     && printf '%s' "$answer" \\
        | python -c 'import json, sys; sys.exit(json.load(sys.stdin)["lastSettled"] is None)'; then
    printf 'SETTLED %s\\n' "$answer"
    curl -sf http://127.0.0.1:8787/healthz | sed 's/^/HEALTH /'
    exit 0
  fi
  sleep 1
done
echo "no settled reading after {WAIT_SECONDS} s" >&2
exit 1
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_the_readme_quickstart_settles(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.sh"
    # The block runs in the background (its last command, the gateway, runs on); the check polls.
    script.write_text(
        "set -u\nip link set lo up\n(\n" + quickstart() + ") >quickstart.log 2>&1 &\n" + CHECK,
        encoding="utf-8",
    )
    bins = [str(REPO_ROOT / ".venv" / "bin"), str(REPO_ROOT / "node_modules" / ".bin")]
    env = {
        "PATH": os.pathsep.join([*bins, os.environ["PATH"]]),
        "HOME": str(tmp_path),  # anvil's ~/.foundry stays in the test's folder
        "LANG": "C.UTF-8",
    }
    run = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--kill-child", "bash", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS + 60,
        check=False,
    )
    log = (tmp_path / "quickstart.log").read_text(encoding="utf-8", errors="replace")
    assert run.returncode == 0, f"{run.stderr}\n--- quickstart log ---\n{log[-4000:]}"
    settled = json.loads(run.stdout.split("SETTLED ", 1)[1].splitlines()[0])
    assert settled["lastSettled"]["cumulativeWh"] > 0
    assert settled["lastSettled"]["timestamp"] <= settled["lastAccepted"]["timestamp"]
    market = json.loads((tmp_path / "market.json").read_text(encoding="utf-8"))
    assert market["deploymentBlock"] >= 1
    assert "Traceback" not in log
