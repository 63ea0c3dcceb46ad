"""The cloud tier against Seldon MLServer, a third-party OIP v2 server (optional, slow).

MLServer is installed in a virtual environment of its own (see
``scripts/mlserver_check.py``); ``STREAMEDGE_MLSERVER_VENV`` points at it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

VENV = Path(os.environ.get("STREAMEDGE_MLSERVER_VENV", "/tmp/mlserver/venv"))

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(
    not (VENV / "bin" / "mlserver").exists(),
    reason=f"MLServer (third-party, see scripts/mlserver_check.py) is not installed in {VENV}",
)
def test_cloud_tier_against_mlserver() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mlserver_check.py"), "--mlserver-venv", str(VENV)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "all MLServer checks passed" in done.stdout
