"""``streamedge demo`` as a user runs it: a subprocess with its own embedded broker."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.helpers import client, collect

pytestmark = pytest.mark.integration


async def test_demo_runs_and_reports_hits_misses_and_inferences(models_dir: Path) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamedge",
        "demo",
        "--duration",
        "16",
        "--port",
        str(port),
        "--every",
        "4",
        "--data-dir",
        str(models_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(90):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                break
            lines.append(line)
            if "gateway ready" in line:
                break
        # A standard MQTT client on the demo's broker receives the stats snapshot.
        async with client(("127.0.0.1", port)) as c:
            await c.subscribe("streamedge/stats", qos=0)
            stats = await collect(c, 1, timeout=15, topic_prefix="streamedge/stats")
        rest, _ = await proc.communicate()
    out = "".join(lines) + rest.decode()
    assert proc.returncode == 0, out
    assert stats and stats[0][1]["gateway"] == "demo"
    m = re.search(r"cache \(application\) hits/misses\s*: (\d+) / (\d+)", out)
    assert m is not None, out
    hits, misses = int(m.group(1)), int(m.group(2))
    assert hits > 0 and misses > 0
    local = re.search(r"local\s+calls\s+(\d+)\s+failures\s+(\d+)", out)
    assert local is not None and int(local.group(1)) > 0 and int(local.group(2)) == 0
    pending = re.search(r"pending\s*: (\d+)", out)
    assert pending is not None and int(pending.group(1)) == 0
    assert json.dumps(stats[0][1])  # the snapshot is plain JSON
