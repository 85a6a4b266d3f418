"""Running `storebot` as operators do: a subprocess with settings in its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO


def cli(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 90):  # type: ignore[no-untyped-def]
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", **env}
    return subprocess.run(
        [sys.executable, "-m", "storebot", *args],
        env=full,
        cwd=Path(env.get("DATA_ROOT", REPO)).parent,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    proc = cli(env, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def get(web_url: str, host: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        kw.pop("method", "GET"),
        f"{web_url}{path}",
        headers={"Host": host, **kw.pop("headers", {})},
        timeout=5,
        **kw,
    )


def wait_status(web_url: str, host: str, path: str, status: int, timeout: float = 10) -> int:
    """Poll until `path` answers `status` (Traefik applies Docker events asynchronously)."""
    deadline = time.monotonic() + timeout
    code = -1
    while time.monotonic() < deadline:
        try:
            code = get(web_url, host, path).status_code
        except httpx.TimeoutException:
            # Until Traefik applies the stop event it may still forward to the stopped
            # container's address, where nothing answers: not yet, poll again.
            code = -1
        if code == status:
            return code
        time.sleep(0.1)
    return code
