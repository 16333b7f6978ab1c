"""`ragserve serve --port 0`: the system picks a free port and the server says which."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_port_zero_binds_an_ephemeral_port_and_reports_it(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RAGSERVE_DATA_DIR": str(tmp_path / "data"),
        "RAGSERVE_PORT": "8000",  # --port 0 must win over the configured port
        "RAGSERVE_RERANKER_LOAD": "lazy",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragserve.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if match and not port:
                port.append(int(match.group(1)))
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(60), "".join(lines)
        assert port[0] not in (0, 8000)
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port[0]}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "".join(lines)
                time.sleep(0.1)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
