"""Waiting for a bot's /health through Traefik (its route and its gateway both work)."""

from __future__ import annotations

import asyncio
import time

import httpx


async def wait_healthy(
    client: httpx.AsyncClient, probe_url: str, host: str, timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            resp = await client.get(f"{probe_url}/health", headers={"Host": host}, timeout=2)
            if resp.status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)
