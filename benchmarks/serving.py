"""`labelloop serve` as a benchmark starts it: wait until it answers `/health`."""

from __future__ import annotations

import subprocess
import time


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 600) -> None:
    """Poll `url`/health until 200; fail when `timeout` passes (a loaded machine starts the
    API slowly) or the server process has exited."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RuntimeError("labelloop serve did not start")
        time.sleep(0.2)
