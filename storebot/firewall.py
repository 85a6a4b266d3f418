"""Host firewall for the bots' bridge: bots reach the LLM meter and the internet, nothing else.

Docker's bridge with ICC off keeps bots from each other; two chains per bridge close
the two other ways out of it.

``SB-<bridge>``, jumped from INPUT for packets entering from the bridge. A container
can open connections to every port the host listens on (storebot, the database,
Traefik's internal entrypoints) through the bridge gateway; those packets are for a
local address, so they go through INPUT, never FORWARD. The chain lets through replies
and the meter's port and drops the rest::

    -A SB-br-x -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    -A SB-br-x -d 10.213.0.1/32 -p tcp -m tcp --dport 8089 -j ACCEPT
    -A SB-br-x -j DROP

``SBE-<bridge>``, jumped from Docker's DOCKER-USER chain (first in FORWARD, and the
one chain of FORWARD that Docker leaves to us) for packets entering from the bridge.
Packets for other machines are forwarded, and Docker accepts every one that leaves its
bridge (``-i br-x ! -o br-x -j ACCEPT``): the cloud metadata service 169.254.169.254,
the provider's private LAN, other Docker networks. The chain rejects every private,
link-local, loopback, shared (CGNAT) and multicast destination and RETURNs the rest to
Docker's rules, so the public internet (Telegram) stays reachable::

    -A SBE-br-x -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
    -A SBE-br-x -d 10.213.0.1/32 -p tcp -m tcp --dport 8089 -j RETURN
    -A SBE-br-x -d 10.0.0.0/8 -j REJECT --reject-with icmp-admin-prohibited
    ...
    -A SBE-br-x -j RETURN

The meter rule there matters only for a meter on another of our machines: a packet for
an address of this host is never forwarded, so for a local meter it never matches.

Rules are written in the form ``iptables -S`` prints them (``/32``, ``-m tcp``,
``RELATED,ESTABLISHED``), so comparing them with the chain's listing is exact and an
unchanged chain is left alone. IPv4 only: the bots' network has no IPv6.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from storebot.errors import EngineError

log = logging.getLogger(__name__)

DOCKER_USER = "DOCKER-USER"
#: destinations bots may not reach through the host's FORWARD path
FENCED = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space (carrier-grade NAT, some cloud LANs)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local: cloud metadata services (169.254.169.254)
    "172.16.0.0/12",  # private (RFC 1918), Docker's default networks
    "192.168.0.0/16",  # private (RFC 1918)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
)
REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]


def chain_name(bridge: str) -> str:
    """The INPUT-side chain (tests/harness.py removes it by this name)."""
    return f"SB-{bridge}"[:28]


def egress_chain_name(bridge: str) -> str:
    """The FORWARD-side chain, jumped from DOCKER-USER."""
    return f"SBE-{bridge}"[:28]


def _meter_rule(chain: str, ip: str, port: int, verdict: str) -> list[str]:
    return [chain, "-d", f"{ip}/32", "-p", "tcp", "-m", "tcp", "--dport", str(port), "-j", verdict]


def _replies(chain: str, verdict: str) -> list[str]:
    return [chain, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", verdict]


def input_rules(bridge: str, meter_ips: Sequence[str], meter_port: int) -> list[list[str]]:
    """INPUT-side chain, in order, as `iptables -A` arguments in `-S` form (pure)."""
    chain = chain_name(bridge)
    out = [_replies(chain, "ACCEPT")]
    out += [_meter_rule(chain, ip, meter_port, "ACCEPT") for ip in meter_ips]
    out.append([chain, "-j", "DROP"])
    return out


def egress_rules(bridge: str, meter_ips: Sequence[str], meter_port: int) -> list[list[str]]:
    """FORWARD-side chain, in order, as `iptables -A` arguments in `-S` form (pure)."""
    chain = egress_chain_name(bridge)
    fenced = [ipaddress.IPv4Network(n) for n in FENCED]
    out = [_replies(chain, "RETURN")]
    out += [
        _meter_rule(chain, ip, meter_port, "RETURN")
        for ip in meter_ips
        if any(ipaddress.IPv4Address(ip) in n for n in fenced)
    ]
    out += [[chain, "-d", n, *REJECT] for n in FENCED]
    out.append([chain, "-j", "RETURN"])
    return out


def jumps(bridge: str) -> list[list[str]]:
    """The two jumps into the chains, as `iptables -I/-C/-D` arguments (pure)."""
    return [
        ["INPUT", "-i", bridge, "-j", chain_name(bridge)],
        [DOCKER_USER, "-i", bridge, "-j", egress_chain_name(bridge)],
    ]


def listing(rules: list[list[str]]) -> list[str]:
    """The `-A` lines `iptables -S <chain>` prints for these rules."""
    return [" ".join(["-A", *r]) for r in rules]


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
    """Install both chains and their jumps (idempotent; a chain is rewritten only when
    it differs). `meter_ip` may also be a host name; it is resolved to IPv4 addresses."""
    async with _host_lock(f"firewall-{bridge}"):
        await _ensure(bridge, meter_ip, meter_port)


async def _ensure(bridge: str, meter_ip: str | None, meter_port: int) -> None:
    if _binary() is None:
        raise EngineError(
            "iptables is not installed: bots would reach every port of this host. "
            "Install it (apt-get install iptables) or set BOT_FIREWALL=false knowingly."
        )
    if (await _iptables("-S", DOCKER_USER))[0] != 0:
        raise EngineError(
            f"iptables chain {DOCKER_USER} is missing, so bots could reach private "
            "addresses (cloud metadata, this LAN). Docker creates it when it starts with "
            "its iptables rules on: start dockerd (without --iptables=false) and retry."
        )
    meter = await _resolve(meter_ip)
    changed = await _sync_chain(chain_name(bridge), input_rules(bridge, meter, meter_port))
    changed |= await _sync_chain(egress_chain_name(bridge), egress_rules(bridge, meter, meter_port))
    for jump in jumps(bridge):  # after the chains: never a jump into a half-built chain
        if (await _iptables("-C", *jump))[0] != 0:
            await _check(await _iptables("-I", jump[0], "1", *jump[1:]))
            changed = True
    if changed:
        log.info(
            "firewall: bots on %s may reach only %s:%s and public addresses",
            bridge,
            ",".join(meter) or "-",
            meter_port,
        )


async def _resolve(host: str | None) -> list[str]:
    if not host:
        return []
    try:
        return [str(ipaddress.IPv4Address(host))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, None, family=socket.AF_INET, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise EngineError(f"cannot resolve the LLM meter's host {host}: {exc}") from None
    return sorted({str(info[4][0]) for info in infos}, key=ipaddress.IPv4Address)


async def _sync_chain(chain: str, wanted: list[list[str]]) -> bool:
    """Make `chain` hold exactly `wanted`; False when it already did (no change)."""
    code, current = await _iptables("-S", chain)
    if code != 0:
        code, out = await _iptables("-N", chain)
        if code != 0 and "exists" not in out:
            raise EngineError(f"cannot create firewall chain {chain}: {out.strip()}")
        current = ""
    # -S may also print "-N chain" and warnings (e.g. "iptables-legacy tables present")
    have = [line for line in current.splitlines() if line.startswith("-A ")]
    if have == listing(wanted):
        return False
    log.debug("firewall: rewriting %s: %s -> %s", chain, have, listing(wanted))
    # Add the new rules first, then drop the old ones: never a moment without DROP.
    for rule in wanted:
        await _check(await _iptables("-A", *rule))
    for _ in have:
        await _check(await _iptables("-D", chain, "1"))
    return True


async def remove(bridge: str) -> None:
    """Remove both jumps and both chains (nothing left is fine)."""
    async with _host_lock(f"firewall-{bridge}"):
        for jump in jumps(bridge):
            while (await _iptables("-D", *jump))[0] == 0:
                pass
        for chain in (chain_name(bridge), egress_chain_name(bridge)):
            await _iptables("-F", chain)
            await _iptables("-X", chain)


async def _check(result: tuple[int, str]) -> None:
    code, out = result
    if code != 0:
        raise EngineError(f"iptables failed: {out.strip()}")
