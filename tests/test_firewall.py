"""The bridge firewall: its rules (pure), its idempotence, and a bot fenced off a LAN.

The integration test builds a stand-in "private LAN host" on this machine: a network
namespace behind a veth pair, with a private address (192.168.x.2) and a public-looking
one (198.51.100.x, a documentation range), serving HTTP. The host reaches both; a bot
reaches the public one only, and reaches the private one too while the fence is
removed (so the blocked fetch is the firewall's doing, not a missing route).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from storebot import firewall
from storebot.errors import EngineError
from tests.cli_helpers import cli_json
from tests.conftest import need
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services

OWNER = 5550002
WRITES = {"-A", "-D", "-I", "-R", "-N", "-F", "-X", "-P", "-Z"}

# Rules (pure) -----------------------------------------------------------------------


def test_input_rules_in_iptables_listing_form() -> None:
    assert firewall.listing(firewall.input_rules("br-abc", ["10.213.0.1"], 8089)) == [
        "-A SB-br-abc -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A SB-br-abc -d 10.213.0.1/32 -p tcp -m tcp --dport 8089 -j ACCEPT",
        "-A SB-br-abc -j DROP",
    ]
    assert firewall.listing(firewall.input_rules("br-abc", [], 8089)) == [
        "-A SB-br-abc -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A SB-br-abc -j DROP",
    ]


def test_egress_rules_fence_private_ranges_and_return_the_rest() -> None:
    reject = "-j REJECT --reject-with icmp-admin-prohibited"
    got = firewall.listing(firewall.egress_rules("br-abc", ["10.9.8.7"], 8089))
    assert got[0] == "-A SBE-br-abc -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    # a meter on another of our machines (private address): allowed before the fence
    assert got[1] == "-A SBE-br-abc -d 10.9.8.7/32 -p tcp -m tcp --dport 8089 -j RETURN"
    assert got[2:-1] == [f"-A SBE-br-abc -d {net} {reject}" for net in firewall.FENCED]
    assert got[-1] == "-A SBE-br-abc -j RETURN"
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"):
        assert net in firewall.FENCED
    for net in ("100.64.0.0/10", "127.0.0.0/8", "224.0.0.0/4"):
        assert net in firewall.FENCED
    # a public meter needs no exception: public addresses are returned anyway
    public = firewall.egress_rules("br-abc", ["203.0.113.9"], 8089)
    assert public == firewall.egress_rules("br-abc", [], 8089)


def test_jumps_and_chain_names() -> None:
    bridge = "br-0123456789ab"  # the longest Docker makes (15 characters)
    assert firewall.jumps(bridge) == [
        ["INPUT", "-i", bridge, "-j", "SB-br-0123456789ab"],
        ["DOCKER-USER", "-i", bridge, "-j", "SBE-br-0123456789ab"],
    ]


def test_meter_host_names_are_resolved() -> None:
    assert asyncio.run(firewall._resolve("localhost")) == ["127.0.0.1"]
    assert asyncio.run(firewall._resolve("10.1.2.3")) == ["10.1.2.3"]
    assert asyncio.run(firewall._resolve(None)) == []


def test_missing_docker_user_chain_is_a_clear_error_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, ...]] = []

    async def fake(*args: str) -> tuple[int, str]:
        calls.append(args)
        return 1, "iptables: No chain/target/match by that name."

    monkeypatch.setattr(firewall, "_binary", lambda: "/usr/sbin/iptables")
    monkeypatch.setattr(firewall, "_iptables", fake)
    with pytest.raises(EngineError, match="DOCKER-USER is missing"):
        asyncio.run(firewall.ensure("br-abc", "10.213.0.1", 8089))
    assert calls == [("-S", "DOCKER-USER")]


# On this host's iptables --------------------------------------------------------------


def _need_iptables() -> None:
    if os.geteuid() != 0 or firewall._binary() is None:
        need("iptables", "needs root and the iptables binary")
    if _ipt("-S", "DOCKER-USER").returncode != 0:
        need("iptables", "the DOCKER-USER chain is missing (is Docker running?)")


def _ipt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", *args], capture_output=True, text=True, check=False)


def _state(bridge: str) -> list[str]:
    """Our chains, and the lines of INPUT and DOCKER-USER that name this bridge."""
    chains = (firewall.chain_name(bridge), firewall.egress_chain_name(bridge))
    lines = [_ipt("-S", chain).stdout for chain in chains]
    for chain in ("INPUT", "DOCKER-USER"):
        lines += [line for line in _ipt("-S", chain).stdout.splitlines() if bridge in line]
    return lines


def _ensure_counting(
    monkeypatch: pytest.MonkeyPatch, bridge: str, meter: str, port: int
) -> list[tuple[str, ...]]:
    """Run firewall.ensure; return the iptables calls it made."""
    calls: list[tuple[str, ...]] = []
    real = firewall._iptables

    async def counting(*args: str) -> tuple[int, str]:
        calls.append(args)
        return await real(*args)

    with monkeypatch.context() as m:
        m.setattr(firewall, "_iptables", counting)
        asyncio.run(firewall.ensure(bridge, meter, port))
    return calls


def _writes(calls: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [c for c in calls if c[0] in WRITES]


def test_ensure_twice_writes_nothing_and_remove_cleans_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _need_iptables()
    bridge = f"sbt{secrets.token_hex(4)}"  # no such interface: rules only name it
    try:
        first = _ensure_counting(monkeypatch, bridge, "10.213.0.1", 8089)
        assert [c[0] for c in _writes(first)].count("-I") == 2
        before = _state(bridge)
        assert _ensure_counting(monkeypatch, bridge, "10.213.0.1", 8089) == [
            ("-S", "DOCKER-USER"),
            ("-S", firewall.chain_name(bridge)),
            ("-S", firewall.egress_chain_name(bridge)),
            *(("-C", *jump) for jump in firewall.jumps(bridge)),
        ]
        assert _state(bridge) == before
        # another meter port: both chains rewritten, the jumps stay single
        assert _writes(_ensure_counting(monkeypatch, bridge, "10.213.0.1", 8090))
        state = _state(bridge)
        assert "--dport 8090" in state[0] and "--dport 8089" not in state[0]
        assert sum(f"-i {bridge} -j" in line for line in state) == 2
        assert not _writes(_ensure_counting(monkeypatch, bridge, "10.213.0.1", 8090))
    finally:
        asyncio.run(firewall.remove(bridge))
    assert _ipt("-S", firewall.chain_name(bridge)).returncode != 0
    assert _ipt("-S", firewall.egress_chain_name(bridge)).returncode != 0
    assert _state(bridge) == ["", ""]


# A bot fenced off a private host on this machine ------------------------------------


@dataclass
class LanHost:
    private: str  # 192.168.x.2, fenced
    public: str  # 198.51.100.x, not fenced (stands for the internet)
    port: int
    body: str

    def url(self, address: str) -> str:
        return f"http://{address}:{self.port}/"


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def _routed() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    nets = []
    for route in json.loads(out):
        with contextlib.suppress(ValueError):  # "default" is no network
            nets.append(ipaddress.IPv4Network(route.get("dst", ""), strict=False))
    return nets


def _unused(candidates: Iterator[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    used = _routed()
    for net in candidates:
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free test address")


@pytest.fixture
def lan_host(tmp_path: Path) -> Iterator[LanHost]:
    """A namespace on this machine: private and public-looking address, HTTP on both."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        need("network namespaces", "needs root and iproute2 (ip netns)")
    tag = secrets.token_hex(4)
    ns, host_if, ns_if = f"sbfw-{tag}", f"sbfw{tag}h", f"sbfw{tag}n"
    lan = _unused(
        ipaddress.IPv4Network(
            f"192.168.{250 + secrets.randbelow(2)}.{4 * secrets.randbelow(64)}/30"
        )
        for _ in range(100)
    )
    public = _unused(
        ipaddress.IPv4Network(f"198.51.100.{1 + secrets.randbelow(254)}/32") for _ in range(100)
    )
    gw, private = (str(a) for a in lan.hosts())
    target = LanHost(private, str(public.network_address), 8080, f"lan host {tag}")
    (tmp_path / "index.html").write_text(target.body)
    server: subprocess.Popen[bytes] | None = None
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", ns)
        _run("ip", "addr", "add", f"{gw}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "route", "add", str(public), "dev", host_if)
        inside = ("ip", "netns", "exec", ns)
        _run(*inside, "ip", "addr", "add", f"{private}/30", "dev", ns_if)
        _run(*inside, "ip", "addr", "add", str(public), "dev", ns_if)
        _run(*inside, "ip", "link", "set", ns_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        server = subprocess.Popen(
            [*inside, sys.executable, "-m", "http.server", str(target.port)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_http(target.url(target.private), server)
        yield target
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        # deleting the namespace deletes its veth end, hence the pair and the route
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)


def _wait_http(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert server.poll() is None, "the namespace's HTTP server exited"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answers {url}")


@pytest.mark.docker
@pytest.mark.traefik
def test_bots_cannot_reach_private_addresses(
    services: Services,
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
    lan_host: LanHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _need_iptables()
    from storebot.db import migrate

    db = f"sqlite:///{tmp_path / 'storebot.db'}"
    migrate(db)
    env = services.env(telegram, db)
    out = cli_json(
        env, "admin", "deploy", "--token", telegram.add_bot().token, "--owner", str(OWNER)
    )
    bot = docker_client.containers.get(out["container"])
    net = docker_client.networks.get(services.network)
    bridge = net.attrs["Options"].get("com.docker.network.bridge.name") or f"br-{net.id}"[:15]

    def fetch(url: str) -> tuple[int, str]:
        # busybox wget -T segfaults in Debian 1.35: bound it with timeout instead
        code, body = bot.exec_run(["timeout", "3", "wget", "-q", "-O", "-", url], user="65534")
        assert isinstance(code, int) and isinstance(body, bytes)
        return code, body.decode(errors="replace")

    private, public = lan_host.url(lan_host.private), lan_host.url(lan_host.public)
    meter = f"http://{services.gateway}:{services.meter_port}/"
    # the host reaches both addresses of the LAN host
    assert httpx.get(private, timeout=5).text == lan_host.body
    assert httpx.get(public, timeout=5).text == lan_host.body

    # deployed with the fence: the private address is out of reach, the rest is not
    assert fetch(private)[0] != 0
    assert fetch(public) == (0, lan_host.body)
    assert fetch(meter) == (0, "meter")

    # without the fence the same fetch goes through: the route exists, the block is ours
    try:
        asyncio.run(firewall.remove(bridge))
        assert fetch(private) == (0, lan_host.body)
    finally:
        asyncio.run(firewall.ensure(bridge, services.gateway, services.meter_port))
    assert fetch(private)[0] != 0
    assert fetch(meter) == (0, "meter")

    # a second ensure with the same arguments lists and checks, and writes nothing
    before = _state(bridge)
    calls = _ensure_counting(monkeypatch, bridge, services.gateway, services.meter_port)
    assert _writes(calls) == []
    assert _state(bridge) == before
    assert fetch(private)[0] != 0
