"""Waiting on a bot's route through Traefik: for its /health (its route and its
gateway both work), or for the route of a stopped container to be gone."""

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


async def wait_unrouted(
    client: httpx.AsyncClient, probe_url: str, host: str, timeout: float
) -> bool:
    """Until Traefik answers 404 for `host`, i.e. it has applied the Docker event of a
    container that stopped. Traefik follows Docker events up to a second or more late:
    a container started again before that is first probed through the stale route (to
    the same address, so /health says 200), then loses the route when the stale event
    lands, and only gets it back with its own start event. Starting only once the route
    is gone makes the next 200 final. Nothing listening on `probe_url` routes nothing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # a stale route leads to an address where nothing answers: do not wait long
            resp = await client.get(f"{probe_url}/health", headers={"Host": host}, timeout=0.2)
            if resp.status_code == 404:
                return True
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
