"""Host firewall for the bots' bridge: bots may reach the LLM meter on this host, nothing else.

Docker's bridge with ICC off keeps bots from each other, but a container can still
open connections to every port the host listens on (storebot, the database,
Traefik's internal entrypoints) through the bridge gateway. Those packets enter the
host's INPUT chain on the bridge interface; one chain per bridge lets through replies
and the meter's port and drops the rest. Traffic to the internet (Telegram) is
forwarded, not input, and stays allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from storebot.errors import EngineError

log = logging.getLogger(__name__)


def chain_name(bridge: str) -> str:
    return f"SB-{bridge}"[:28]


def rules(bridge: str, meter_ip: str | None, meter_port: int) -> list[list[str]]:
    """The chain's rules, in order, as iptables `-A` arguments (pure)."""
    chain = chain_name(bridge)
    out = [[chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]]
    if meter_ip:
        out.append([chain, "-p", "tcp", "-d", meter_ip, "--dport", str(meter_port), "-j", "ACCEPT"])
    out.append([chain, "-j", "DROP"])
    return out


def _binary() -> str | None:
    # sbin is often missing from PATH of services and cron jobs
    return shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")


async def _iptables(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        _binary() or "iptables",
        "-w",
        "5",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


@contextlib.asynccontextmanager
async def _host_lock(name: str) -> AsyncIterator[None]:
    """Serialise storebot processes on this host (two deploys may start at once).

    Without it their "add new rules, drop old ones" steps interleave and can leave a
    DROP ahead of the rule that lets replies through.
    """
    fd = await asyncio.to_thread(_lock, name)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock(name: str) -> int:
    run = Path("/run/storebot")
    try:
        run.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        run = Path(tempfile.gettempdir())
    fd = os.open(run / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def ensure(bridge: str, meter_ip: str | None, meter_port: int) -> None:
    """Install the chain and its jump (idempotent; rewritten only when it differs)."""
    async with _host_lock(f"firewall-{bridge}"):
        await _ensure(bridge, meter_ip, meter_port)


async def _ensure(bridge: str, meter_ip: str | None, meter_port: int) -> None:
    if _binary() is None:
        raise EngineError(
            "iptables is not installed: bots would reach every port of this host. "
            "Install it (apt-get install iptables) or set BOT_FIREWALL=false knowingly."
        )
    chain = chain_name(bridge)
    wanted = [" ".join(["-A", *r]) for r in rules(bridge, meter_ip, meter_port)]
    jump = ["INPUT", "-i", bridge, "-j", chain]
    (code, current), (jumps, _) = await asyncio.gather(
        _iptables("-S", chain), _iptables("-C", *jump)
    )
    if code != 0:
        code, out = await _iptables("-N", chain)
        if code != 0 and "exists" not in out:
            raise EngineError(f"cannot create firewall chain {chain}: {out.strip()}")
        current = ""
    have = [line for line in current.splitlines() if line.startswith("-A ")]
    if have != wanted:
        # Add the new rules first, then drop the old ones: never a moment without DROP.
        for r in rules(bridge, meter_ip, meter_port):
            await _check(await _iptables("-A", *r))
        for _ in have:
            await _check(await _iptables("-D", chain, "1"))
    if jumps != 0:
        await _check(await _iptables("-I", *jump))
        log.info("firewall: bots on %s may reach only %s:%s", bridge, meter_ip, meter_port)


async def remove(bridge: str) -> None:
    chain = chain_name(bridge)
    while (await _iptables("-D", "INPUT", "-i", bridge, "-j", chain))[0] == 0:
        pass
    await _iptables("-F", chain)
    await _iptables("-X", chain)


async def _check(result: tuple[int, str]) -> None:
    code, out = result
    if code != 0:
        raise EngineError(f"iptables failed: {out.strip()}")
