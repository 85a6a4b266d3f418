"""The reconciler: its plan for every case (pure), then faults made by hand on the real
Docker engine and Traefik: a container removed, a suspended bot's container started,
containers the database does not know, crashed deploys, and dockerd restarted."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import docker.errors
import pytest
from sqlmodel import col, select

from storebot import bot_ops, firewall
from storebot.app import build_hosting
from storebot.container_spec import LABEL_BOT, LABEL_INSTANCE, LABEL_MANAGED
from storebot.deploy import DeployResult, deploy
from storebot.hosting import Hosting
from storebot.models import Bot, BotStatus, RepairRecord, utcnow
from storebot.reconciler import (
    FINISHED,
    INTERRUPTED,
    NO_CONFIG,
    Action,
    BotFacts,
    ContainerFacts,
    Repair,
    plan,
    reconcile,
    repair_counts,
)
from storebot.settings import Settings
from tests.chat_helpers import shop_env, storebot
from tests.cli_helpers import wait_status
from tests.conftest import need
from tests.fakes.telegram import FakeTelegram
from tests.harness import STANDIN, Services
from tests.rows import add_bot

OWNER = 5550901
OPS = -100778

# The plan (pure) ----------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STALE = timedelta(seconds=300)
S = BotStatus


def name_for(bot_id: str) -> str:
    return f"storebot-x-{bot_id}"


def row(bot_id: str, status: BotStatus, *, age: float = 0, config: bool = True) -> BotFacts:
    return BotFacts(bot_id, status, NOW - timedelta(seconds=age), config)


def box(bot_id: str | None, state: str, name: str | None = None) -> ContainerFacts:
    return ContainerFacts(name or name_for(bot_id or "none"), bot_id, state)


def steps(bots: list[BotFacts], containers: list[ContainerFacts]) -> list[tuple[str, str | None]]:
    return [(r.action, r.bot_id) for r in plan(bots, containers, NOW, STALE, name_for)]


def test_running_bot_is_brought_back() -> None:
    assert steps([row("a", S.running)], []) == [(Action.recreate, "a")]
    for state in ("exited", "created", "dead"):
        assert steps([row("a", S.running)], [box("a", state)]) == [(Action.start, "a")]
    for state in ("running", "restarting", "paused", "removing"):
        assert steps([row("a", S.running)], [box("a", state)]) == [], state
    [repair] = plan([row("a", S.running)], [], NOW, STALE, name_for)
    assert repair.container == "storebot-x-a" and "missing" in repair.detail


def test_running_bot_without_config_fails_only_when_it_must_start() -> None:
    assert steps([row("a", S.running, config=False)], []) == [(Action.fail, "a")]
    assert steps([row("a", S.running, config=False)], [box("a", "exited")]) == [(Action.fail, "a")]
    [repair] = plan([row("a", S.running, config=False)], [], NOW, STALE, name_for)
    assert repair.detail == NO_CONFIG
    # a running container keeps its config mounted: nothing to repair
    assert steps([row("a", S.running, config=False)], [box("a", "running")]) == []


@pytest.mark.parametrize("status", [S.suspended, S.failed, S.awaiting_payment, S.awaiting_token])
def test_held_bot_is_stopped(status: BotStatus) -> None:
    for state in ("running", "restarting", "paused"):
        assert steps([row("a", status)], [box("a", state)]) == [(Action.stop, "a")]
    for state in ("exited", "created"):
        assert steps([row("a", status)], [box("a", state)]) == []
    assert steps([row("a", status)], []) == []  # never started, never recreated


def test_foreign_containers_are_removed() -> None:
    bots = [row("a", S.running), row("d", S.destroyed)]
    containers = [
        box("a", "running"),
        box("d", "exited"),  # a destroyed bot's
        box("zz", "running"),  # a bot the database does not know
        box(None, "created", "storebot-x-nolabel"),  # no bot id at all
    ]
    got = plan(bots, containers, NOW, STALE, name_for)
    assert [(r.action, r.bot_id, r.container) for r in got] == [
        (Action.remove, "d", "storebot-x-d"),
        (Action.remove, None, "storebot-x-zz"),
        (Action.remove, None, "storebot-x-nolabel"),
    ]
    assert "does not know (zz)" in got[1].detail
    assert steps([row("d", S.destroyed)], []) == []


def test_a_stray_container_of_a_known_bot_is_removed_and_the_real_one_made() -> None:
    stray = box("a", "running", "someone-elses-name")
    assert steps([row("a", S.running)], [stray]) == [(Action.remove, "a"), (Action.recreate, "a")]
    real = box("a", "running")
    assert steps([row("a", S.running)], [stray, real]) == [(Action.remove, "a")]


def test_interrupted_deploys() -> None:
    old = STALE.total_seconds() + 1
    assert steps([row("a", S.deploying, age=old)], []) == [(Action.finish_deploy, "a")]
    assert steps([row("a", S.deploying, age=old)], [box("a", "running")]) == [
        (Action.finish_deploy, "a")
    ]
    [failed] = plan([row("a", S.deploying, age=old, config=False)], [], NOW, STALE, name_for)
    assert (failed.action, failed.detail) == (Action.fail, INTERRUPTED)
    # a deploy in progress is left alone, with or without its container yet
    assert steps([row("a", S.deploying, age=STALE.total_seconds())], []) == []
    assert steps([row("a", S.deploying, age=5, config=False)], [box("a", "created")]) == []


def test_agreeing_state_needs_nothing() -> None:
    bots = [
        row("r", S.running),
        row("s", S.suspended),
        row("f", S.failed),
        row("p", S.awaiting_payment, config=False),
        row("t", S.awaiting_token, config=False),
        row("d", S.destroyed),
    ]
    containers = [box("r", "running"), box("s", "exited"), box("f", "exited")]
    assert steps(bots, containers) == []


# Against Docker and Traefik -----------------------------------------------------------


@pytest.fixture
def h(hosting: Hosting) -> Hosting:
    return hosting


async def _deploy(h: Hosting, telegram: FakeTelegram) -> DeployResult:
    return await deploy(h, token=telegram.add_bot().token, owner_telegram_id=OWNER, actor="t")


def _mine(repairs: list[Repair], *bot_ids: str | None) -> list[tuple[str, str | None]]:
    """Repairs of these bots (earlier tests' containers share the instance label, so a
    pass also removes those: their rows are in other tests' databases)."""
    return [(r.action, r.bot_id) for r in repairs if r.bot_id in bot_ids]


def _bot(h: Hosting, bot_id: str) -> Bot:
    with h.session() as s:
        bot = s.get(Bot, bot_id)
        assert bot is not None
        return bot


def _events(h: Hosting, bot_id: str) -> list[tuple[str | None, str, str, str]]:
    with h.session() as s:
        return [(e.from_status, e.to_status, e.actor, e.reason) for e in h.events(s, bot_id)]


def _healthy(services: Services, bot_id: str, timeout: float = 10) -> bool:
    host = f"{bot_id}.bots.storebot.test"
    return wait_status(services.web_url, host, "/health", 200, timeout) == 200


def _state(client: docker.DockerClient, name: str) -> str:
    try:
        return str(client.containers.get(name).status)
    except docker.errors.NotFound:
        return "missing"


def _new_id(prefix: str) -> str:
    """A bot id no other test uses (DATA_ROOT and the Docker engine are shared)."""
    return prefix + secrets.token_hex(3)


def _age(h: Hosting, bot_id: str, status: BotStatus, seconds: float) -> None:
    """The row as a process that crashed `seconds` ago left it."""
    with h.session() as s:
        bot = s.get(Bot, bot_id)
        assert bot is not None
        bot.status, bot.updated_at = status, utcnow() - timedelta(seconds=seconds)
        s.add(bot)
        s.commit()


@pytest.mark.docker
@pytest.mark.traefik
async def test_container_removed_by_hand_is_recreated(
    h: Hosting, services: Services, telegram: FakeTelegram, docker_client: docker.DockerClient
) -> None:
    bot = await _deploy(h, telegram)
    docker_client.containers.get(bot.container).remove(force=True)  # docker rm -f

    repairs = await reconcile(h)
    assert _mine(repairs, bot.id) == [(Action.recreate, bot.id)]
    assert _state(docker_client, bot.container) == "running"
    assert _healthy(services, bot.id)
    assert _bot(h, bot.id).status is BotStatus.running
    [event, *_] = _events(h, bot.id)
    assert event[:3] == ("running", "running", "reconciler") and "missing" in event[3]
    with h.session() as s:
        assert repair_counts(s)["recreate"] == 1
        assert repair_counts(s, since=utcnow()) == {}
        [record] = s.exec(select(RepairRecord).where(RepairRecord.bot_id == bot.id)).all()
        assert record.action == "recreate"
    assert _mine(await reconcile(h), bot.id) == []  # agreed: nothing more to do


@pytest.mark.docker
@pytest.mark.traefik
async def test_suspended_bot_started_by_hand_is_stopped_again(
    h: Hosting, services: Services, telegram: FakeTelegram, docker_client: docker.DockerClient
) -> None:
    bot = await _deploy(h, telegram)
    await bot_ops.suspend(h, bot.id, actor="ops", reason="abuse")
    docker_client.containers.get(bot.container).start()  # docker start, by hand

    assert _mine(await reconcile(h), bot.id) == [(Action.stop, bot.id)]
    assert _state(docker_client, bot.container) == "exited"
    assert _bot(h, bot.id).status is BotStatus.suspended
    assert _bot(h, bot.id).status_reason == "abuse"  # the operator's word stands


@pytest.mark.docker
@pytest.mark.traefik
async def test_storebot_repairs_at_start_up_and_tells_ops_and_owners(
    h: Hosting,
    services: Services,
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
    hosted_env: dict[str, str],
) -> None:
    """`storebot run` with the reconciler on (tests turn it off elsewhere: they share
    one instance label): its first pass, at start-up, repairs, then the ops chat reads
    which bot got what and each owner of an interrupted deploy is told the outcome."""
    stale = h.settings.DEPLOY_STALE_SECONDS + 60
    missing = await _deploy(h, telegram)  # running, container removed by hand
    docker_client.containers.get(missing.container).remove(force=True)
    finished = await deploy(
        h, token=telegram.add_bot().token, owner_telegram_id=OWNER + 3, actor="t"
    )  # crashed mid-deploy after its config was written
    docker_client.containers.get(finished.container).remove(force=True)
    _age(h, finished.id, BotStatus.deploying, stale)
    failed = add_bot(h.db, _new_id("order"), owner=OWNER + 4, status=BotStatus.deploying)
    _age(h, failed, BotStatus.deploying, stale)  # crashed before its config: failed

    shop = telegram.add_bot(username="storebot_repair_bot")
    env = hosted_env | {"RECONCILER": "true", "OPS_CHAT_ID": str(OPS), "ADMIN_USER_IDS": "1"}
    settings = Settings(_env_file=None, **(env | shop_env(shop.token)))  # type: ignore[arg-type]
    async with storebot(settings):
        report = await telegram.await_message(shop.token, OPS, "Reconciler:", timeout=60)
        lines = report["text"].splitlines()
        assert f"- {missing.id}: its container was missing: re-created" in lines
        assert f"- {finished.id}: {FINISHED}" in lines
        assert f"- {failed}: {INTERRUPTED}" in lines
        live = await telegram.await_message(shop.token, OWNER + 3, "is live", timeout=10)
        assert finished.id in live["text"] and "New gateway token" in live["text"]
        again = await telegram.await_message(shop.token, OWNER + 4, "interrupted", timeout=10)
        assert failed in again["text"] and "token again" in again["text"]
    assert _healthy(services, missing.id) and _healthy(services, finished.id)


@pytest.mark.docker
async def test_containers_the_database_does_not_know_are_removed(
    h: Hosting, docker_client: docker.DockerClient
) -> None:
    instance = h.settings.STOREBOT_INSTANCE
    ours = {LABEL_MANAGED: "true", LABEL_INSTANCE: instance}
    ghost, gone = _new_id("ghost"), add_bot(h.db, _new_id("gone"), status=BotStatus.destroyed)
    made = {
        "ghost": docker_client.containers.create(
            STANDIN, name=h.container_name(ghost), labels={**ours, LABEL_BOT: ghost}
        ),
        "destroyed": docker_client.containers.create(
            STANDIN, name=h.container_name(gone), labels={**ours, LABEL_BOT: gone}
        ),
        # carries the instance label but not storebot.managed: not ours to remove
        "other": docker_client.containers.create(
            STANDIN, name=f"sb-{instance}-{_new_id('other')}", labels={LABEL_INSTANCE: instance}
        ),
    }
    repairs = await reconcile(h)
    removed = {r.container for r in repairs if r.action is Action.remove}
    assert {h.container_name(ghost), h.container_name(gone)} <= removed
    assert _state(docker_client, made["ghost"].name) == "missing"
    assert _state(docker_client, made["destroyed"].name) == "missing"
    assert _state(docker_client, made["other"].name) == "created"
    assert _events(h, gone)[0][2] == "reconciler"
    with h.session() as s:
        unknown = s.exec(select(RepairRecord).where(col(RepairRecord.bot_id).is_(None))).all()
        assert any(ghost in r.detail for r in unknown)


@pytest.mark.docker
@pytest.mark.traefik
async def test_interrupted_deploys_are_finished_or_failed(
    h: Hosting, services: Services, telegram: FakeTelegram, docker_client: docker.DockerClient
) -> None:
    stale = h.settings.DEPLOY_STALE_SECONDS + 60
    # crashed after writing the config: finished (its container re-created)
    done = await _deploy(h, telegram)
    docker_client.containers.get(done.container).remove(force=True)
    _age(h, done.id, BotStatus.deploying, stale)
    # a paid order that crashed before its config was written: failed
    order = add_bot(h.db, _new_id("order"), owner=OWNER + 1, status=BotStatus.deploying)
    _age(h, order, BotStatus.deploying, stale)
    # a deploy in progress right now: left alone
    busy = add_bot(h.db, _new_id("busy"), owner=OWNER + 2, status=BotStatus.deploying)

    repairs = await reconcile(h)
    assert sorted(_mine(repairs, done.id, order, busy)) == sorted(
        [(Action.finish_deploy, done.id), (Action.fail, order)]
    )
    assert _bot(h, done.id).status is BotStatus.running
    assert _events(h, done.id)[0][:3] == ("deploying", "running", "reconciler")
    assert _healthy(services, done.id)
    failed = _bot(h, order)
    assert (failed.status, failed.status_reason) == (BotStatus.failed, INTERRUPTED)
    assert _bot(h, busy).status is BotStatus.deploying
    # the failed order takes the customer's token again
    token = telegram.add_bot().token
    again = await deploy(h, token=token, owner_telegram_id=OWNER + 1, actor="t", order_id=order)
    assert (again.id, again.status) == (order, "running")


@pytest.mark.docker
async def test_running_bot_with_no_config_is_marked_failed(h: Hosting) -> None:
    bot_id = add_bot(h.db, _new_id("noconf"), status=BotStatus.running)
    assert _mine(await reconcile(h), bot_id) == [(Action.fail, bot_id)]
    bot = _bot(h, bot_id)
    assert (bot.status, bot.status_reason) == (BotStatus.failed, NO_CONFIG)


@pytest.fixture
async def down(hosted_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Hosting]:
    """A Hosting on the same database and Traefik whose Docker is out of reach."""
    env = {**hosted_env, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    hosting = build_hosting(Settings(_env_file=None, **env))  # type: ignore[arg-type]
    try:
        yield hosting
    finally:
        await hosting.aclose()


@pytest.mark.docker
async def test_docker_unreachable_changes_nothing(
    down: Hosting, caplog: pytest.LogCaptureFixture
) -> None:
    lost = add_bot(down.db, _new_id("lost"), status=BotStatus.running)  # no container
    with caplog.at_level(logging.WARNING, logger="storebot.reconciler"):
        assert await reconcile(down) == []
    assert "reconcile skipped: Docker is not reachable" in caplog.text
    assert _bot(down, lost).status is BotStatus.running
    with down.session() as s:
        assert repair_counts(s) == {}


@pytest.mark.docker
@pytest.mark.traefik
async def test_a_suspend_holds_with_docker_down_and_the_reconciler_stops_the_container(
    h: Hosting,
    down: Hosting,
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
) -> None:
    """The kill switch from a process that cannot reach Docker: the bot is suspended
    (so the meter refuses it and nothing restarts it), the operator is told that its
    container still runs, and the next reconciler pass that reaches Docker stops it."""
    bot = await _deploy(h, telegram)
    out = await bot_ops.suspend(down, bot.id, actor="ops", reason="abuse")
    assert out.changed and out.status == "suspended"
    assert "LLM access is off, but its container is not stopped yet" in out.message
    assert "Docker" in out.message and "reconciler" in out.message and ".." not in out.message
    assert _bot(h, bot.id).status is BotStatus.suspended
    assert _state(docker_client, bot.container) == "running"  # Docker was out of reach
    assert _mine(await reconcile(h), bot.id) == [(Action.stop, bot.id)]
    assert _state(docker_client, bot.container) == "exited"
    assert _bot(h, bot.id).status_reason == "abuse"


@pytest.mark.docker
async def test_firewall_jumps_dropped_by_hand_are_put_back(h: Hosting) -> None:
    bridge = (await h.prepare_network()).bridge
    _drop_jumps(bridge)
    assert not _jumps_in_place(bridge)
    await reconcile(h)  # Hosting had the network cached: the pass does not trust that
    assert _jumps_in_place(bridge)


# dockerd restarted ----------------------------------------------------------------------

DOCKER_PID = Path("/var/run/docker.pid")
DOCKERD_LOG = Path("/tmp/storebot-ci-dockerd.log")


def _restartable_dockerd() -> tuple[int, list[str]]:
    """The local dockerd's pid and command line, when it is ours to restart (as .ci/run
    starts it: as root, no systemd); need() says why not otherwise."""
    what = "a local dockerd this test may restart"
    host = os.environ.get("DOCKER_HOST", "")
    if host not in ("", "unix:///var/run/docker.sock"):
        need(what, f"DOCKER_HOST={host} is another machine's or socket's engine")
    if os.geteuid() != 0:
        need(what, "only root may restart dockerd")
    try:
        pid = int(DOCKER_PID.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except (OSError, ValueError) as exc:
        need(what, f"no running dockerd behind {DOCKER_PID}: {exc}")
    args = [a.decode() for a in cmdline]
    if Path(args[0]).name != "dockerd":
        need(what, f"{DOCKER_PID} names pid {pid}, which is {args[0]}, not dockerd")
    if "docker.service" in cgroup:
        need(what, "systemd manages this dockerd (systemctl restart docker)")
    return pid, args


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # an unreaped zombie has exited


def _docker_answers() -> bool:
    """As .ci/run asks (docker-py's client leaks a socket when the daemon is down)."""
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _stop_dockerd(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _alive(pid):
        assert time.monotonic() < deadline, "dockerd did not exit within 60 s of SIGTERM"
        time.sleep(0.1)


def _start_dockerd(args: list[str]) -> None:
    """As .ci/run does: its own session, no inherited stdio, appending to its log."""
    with DOCKERD_LOG.open("ab") as log:
        subprocess.run(
            ["setsid", "-f", *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True
        )
    deadline = time.monotonic() + 60
    while not _docker_answers():
        assert time.monotonic() < deadline, f"dockerd did not answer within 60 s: {DOCKERD_LOG}"
        time.sleep(0.2)


@pytest.fixture
def dockerd() -> Iterator[tuple[int, list[str]]]:
    """The dockerd to restart; whatever the test does, Docker answers again after it."""
    pid, args = _restartable_dockerd()
    yield pid, args
    if not _docker_answers():
        if not _alive(pid):
            _start_dockerd(args)
        assert _docker_answers()


def _drop_jumps(bridge: str) -> None:
    for jump in firewall.jumps(bridge):
        subprocess.run(["iptables", "-w", "5", "-D", *jump], check=True)


def _jumps_in_place(bridge: str) -> bool:
    out = subprocess.run(
        ["iptables", "-S"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return all(rule in out for rule in firewall.listing(firewall.jumps(bridge)))


@pytest.mark.docker
@pytest.mark.traefik
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # restarted once, not per database
async def test_dockerd_restart(
    dockerd: tuple[int, list[str]],
    h: Hosting,
    services: Services,
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    up, held = await _deploy(h, telegram), await _deploy(h, telegram)
    await bot_ops.suspend(h, held.id, actor="ops", reason="abuse")
    bridge = (await h.prepare_network()).bridge
    assert _jumps_in_place(bridge)

    pid, args = dockerd
    # DockerEngine drops its client without closing it when the daemon goes away,
    # leaking the pooled socket (a ResourceWarning, an error here): start without one.
    await h.docker.close()
    _stop_dockerd(pid)
    try:
        with caplog.at_level(logging.WARNING, logger="storebot.reconciler"):
            assert await reconcile(h) == []
        assert "reconcile skipped: Docker is not reachable" in caplog.text
        assert (_bot(h, up.id).status, _bot(h, held.id).status) == ("running", "suspended")
    finally:
        _start_dockerd(args)

    repairs = await reconcile(h)
    assert _mine(repairs, up.id, held.id) in ([], [(Action.start, up.id)])
    assert _state(docker_client, up.container) == "running"
    assert _state(docker_client, held.container) == "exited"  # a suspension survives
    assert _healthy(services, up.id, timeout=30)  # Traefik re-read Docker by itself
    assert _jumps_in_place(bridge)
    with h.session() as s:
        running = s.exec(select(Bot).where(Bot.status == BotStatus.running)).all()
    assert [b.id for b in running] == [up.id]
    assert (_bot(h, held.id).status, _bot(h, held.id).status_reason) == ("suspended", "abuse")
    # and Traefik follows Docker's events again: a new bot is routed
    fresh = await _deploy(h, telegram)
    assert _healthy(services, fresh.id)
