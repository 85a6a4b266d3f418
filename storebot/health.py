"""Waiting for a bot's /health through Traefik (its route and its gateway both work)."""

from __future__ import annotations

import asyncio
import time

import httpx


async def wait_healthy(
    client: httpx.AsyncClient, probe_url: str, host: str, timeout: float
) -> bool:
    # Poll tightly at first: Traefik routes a new container within ~0.1 s, and each
    # late poll is latency the customer waits for. Back off for slow starters.
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            resp = await client.get(f"{probe_url}/health", headers={"Host": host}, timeout=2)
            if resp.status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01 if time.monotonic() - start < 2 else 0.25)
