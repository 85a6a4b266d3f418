"""Sweep benchmark: one anomaly sweep over N bot containers against `docker stats`.

Starts N stand-in containers (default 100) with storebot's own container spec (limits,
hardening, labels), then, in the same run and interleaved so both see the same load:
  sweep:        storebot's `Sampler.sweep()` (cgroup files, one Docker list call and
                one events call);
  api sweep:    the same with the cgroup path off, as on a remote Docker host;
  docker stats: `docker stats --no-stream` over the same containers.
Prints the median seconds of each over R rounds (default 5) and the ratio
sweep / docker stats (target <= 0.5), with the CPU time each sweep cost storebot and
the Docker daemon. Then sweeps every 15 s for 60 s and prints storebot's CPU share
(process CPU time of all its threads over wall time) and the daemon's.

Everything it starts carries a fresh storebot.instance label and is removed at the
end, also after Ctrl-C. Needs Docker and busybox-static (as the tests); run as root:
    .venv/bin/python -m bench.sweep [-n 100] [--rounds 5] [--interval 15] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from types import FrameType

import docker

from storebot.container_spec import container_spec, default_limits
from storebot.docker_engine import DockerEngine
from storebot.sampling import Sampler
from storebot.settings import Settings
from tests.harness import STANDIN, base_env, cleanup
from tests.standin.build import ensure_images

DOCKERD_PIDFILE = Path("/var/run/docker.pid")


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime + r.ru_stime


def dockerd_cpu() -> float | None:
    """CPU seconds used so far by the local Docker daemon, if we can see it."""
    try:
        pid = DOCKERD_PIDFILE.read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_bots(client: docker.DockerClient, settings: Settings, n: int, home: Path) -> list[str]:
    (home / ".nullclaw").mkdir(parents=True)
    (home / ".nullclaw" / "config.json").write_text(json.dumps({"gateway": {"port": 3000}}))
    for p in (home, home / ".nullclaw", home / ".nullclaw" / "config.json"):
        os.chown(p, 65534, 65534)
    limits = default_limits(settings)

    def start(i: int) -> str:
        spec = container_spec(settings, f"b{i:04d}", PurePosixPath(home), limits)
        client.containers.run(detach=True, **spec)
        return str(spec["name"])

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(start, range(n)))


class Meter:
    """Wall time and CPU time (ours, the daemon's) of each call."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.daemon: list[float] = []

    async def time(self, fn: Callable[[], Awaitable[object]]) -> None:
        d0, c0, t0 = dockerd_cpu(), own_cpu(), time.perf_counter()
        await fn()
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(own_cpu() - c0)
        d1 = dockerd_cpu()
        if d0 is not None and d1 is not None:
            self.daemon.append(d1 - d0)

    def line(self, label: str) -> str:
        daemon = f"{statistics.median(self.daemon) * 1000:6.0f}" if self.daemon else "     ?"
        return (
            f"  {label:<28} median {statistics.median(self.wall):6.3f} s  "
            f"(min {min(self.wall):.3f}, max {max(self.wall):.3f}); CPU ms: "
            f"storebot {statistics.median(self.cpu) * 1000:5.0f}, dockerd {daemon}"
        )


async def docker_stats(names: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        "docker",
        "stats",
        "--no-stream",
        *names,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"docker stats failed: {err.decode()[-500:]}")


async def measure(args: argparse.Namespace, instance: str, names: list[str]) -> None:
    engine, api_engine = DockerEngine(), DockerEngine()
    sampler = Sampler(engine, instance)
    api_sampler = Sampler(api_engine, instance, cgroup_root=None)
    ours, api, theirs = Meter(), Meter(), Meter()
    try:
        for s in (sampler, api_sampler):  # warm up: connections, limits cache
            if len(await s.sweep()) != len(names):
                raise RuntimeError("the sweep did not see every container")
        for _ in range(args.rounds):
            await ours.time(sampler.sweep)
            await api.time(api_sampler.sweep)
            await theirs.time(lambda: docker_stats(names))
        ratio = statistics.median(ours.wall) / statistics.median(theirs.wall)
        print(f"sweep benchmark, n={len(names)} containers, {args.rounds} rounds")
        print(ours.line("storebot sweep (cgroup)"))
        print(api.line("storebot sweep (API only)"))
        print(theirs.line("docker stats --no-stream"))
        print(f"  ratio of medians, sweep / docker stats: {ratio:.3f} (target <= 0.5)")
        print(
            f"  ratio of medians, API-only sweep / docker stats: "
            f"{statistics.median(api.wall) / statistics.median(theirs.wall):.3f}"
        )

        sweeps, d0, c0, t0 = 0, dockerd_cpu(), own_cpu(), time.monotonic()
        while sweeps * args.interval < args.duration:
            await sampler.sweep()
            sweeps += 1
            await asyncio.sleep(max(0.0, t0 + sweeps * args.interval - time.monotonic()))
        wall = time.monotonic() - t0
        share = (own_cpu() - c0) / wall
        d1 = dockerd_cpu()
        daemon = f"{(d1 - d0) / wall:.2%}" if d0 is not None and d1 is not None else "?"
        print(
            f"  sweeping every {args.interval:g} s for {wall:.0f} s ({sweeps} sweeps): "
            f"storebot CPU {share:.3%} of one core, dockerd {daemon}"
        )
    finally:
        await engine.close()
        await api_engine.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("-n", type=int, default=100, help="containers (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--interval", type=float, default=15, help="sweep every (s)")
    parser.add_argument("--duration", type=float, default=60, help="CPU share over (s)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    instance = "bench" + secrets.token_hex(3)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **base_env(instance, NULLCLAW_IMAGE=STANDIN, BOT_NETWORK="bridge"),
    )
    client = docker.from_env(timeout=120)
    ensure_images(client)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            t0 = time.perf_counter()
            names = start_bots(client, settings, args.n, Path(tmp) / "home")
            print(f"started {len(names)} containers in {time.perf_counter() - t0:.1f} s")
            time.sleep(3)  # let them settle
            asyncio.run(measure(args, instance, names))
        finally:
            cleanup(client, instance)
            client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
