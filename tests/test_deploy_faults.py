"""Bad input and failures: each gets a clear answer, and nothing is lost or half-claimed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import docker
import pytest

from storebot.db import make_engine, session
from storebot.models import Bot, utcnow
from tests.cli_helpers import REPO, cli, cli_json, get
from tests.conftest import base_env
from tests.fakes.telegram import FakeTelegram, make_token
from tests.harness import Services
from tests.standin.build import UNHEALTHY_IMAGE

OWNER = "5550002"


def _bots(env: dict[str, str]) -> list[dict[str, str]]:
    return cli_json(env, "admin", "list", "--all")  # type: ignore[no-any-return]


def _containers(client: docker.DockerClient, bot_id: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"storebot.bot-id={bot_id}"})
    return [c.status for c in found]


# Token checks: nothing is created ----------------------------------------------------


@pytest.mark.parametrize("token", ["hello", "123456:short", "/start", "123:" + "a" * 36])
def test_malformed_token(migrated_db: str, telegram: FakeTelegram, token: str) -> None:
    env = base_env(DATABASE_URL=migrated_db, TELEGRAM_API_BASE=telegram.base_url)
    before = len(telegram.calls_for("getMe"))
    proc = cli(env, "admin", "deploy", "--token", token, "--owner", OWNER)
    assert proc.returncode == 1
    assert "not a Telegram bot token" in proc.stderr and "Traceback" not in proc.stderr
    assert len(telegram.calls_for("getMe")) == before  # refused before asking Telegram
    assert _bots(env) == []


def test_token_rejected_by_getme(migrated_db: str, telegram: FakeTelegram) -> None:
    env = base_env(DATABASE_URL=migrated_db, TELEGRAM_API_BASE=telegram.base_url)
    revoked = telegram.add_bot()
    telegram.revoke(revoked.token)
    for token in (make_token(), revoked.token):
        proc = cli(env, "admin", "deploy", "--token", token, "--owner", OWNER)
        assert proc.returncode == 1
        assert "Telegram rejected this token" in proc.stderr
        assert token not in proc.stderr + proc.stdout
    assert _bots(env) == []


def test_telegram_down_is_not_a_rejection(migrated_db: str) -> None:
    env = base_env(DATABASE_URL=migrated_db, TELEGRAM_API_BASE="http://127.0.0.1:9")
    proc = cli(env, "admin", "deploy", "--token", make_token(), "--owner", OWNER)
    assert proc.returncode == 1
    assert "Telegram did not answer" in proc.stderr


@pytest.mark.parametrize("action", ["show", "suspend", "resume", "restart", "destroy", "logs"])
def test_unknown_bot_id(migrated_db: str, action: str) -> None:
    extra = ["--yes"] if action == "destroy" else []
    proc = cli(base_env(DATABASE_URL=migrated_db), "admin", action, "zzzz9999", *extra)
    assert proc.returncode == 1
    assert "no bot with id 'zzzz9999'" in proc.stderr and "Traceback" not in proc.stderr


def test_unmigrated_database_says_what_to_do(tmp_path: Path) -> None:
    proc = cli(base_env(DATABASE_URL=f"sqlite:///{tmp_path}/new.db"), "admin", "list")
    assert proc.returncode == 1
    assert "storebot migrate" in proc.stderr


def test_help_lists_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storebot", "admin", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for word in ("deploy", "list", "show", "suspend", "resume", "restart", "destroy", "logs"):
        assert word in proc.stdout


# Lifecycle and engine failures -------------------------------------------------------


def test_destroy_twice_and_other_customers_token(
    hosted_env: dict[str, str], telegram: FakeTelegram
) -> None:
    token = telegram.add_bot().token
    bot = cli_json(hosted_env, "admin", "deploy", "--token", token, "--owner", OWNER)

    other = cli(hosted_env, "admin", "deploy", "--token", token, "--owner", "777")
    assert other.returncode == 1 and "already hosted here for another customer" in other.stderr
    again = cli(hosted_env, "admin", "deploy", "--token", token, "--owner", OWNER)
    assert again.returncode == 1 and f"already runs as bot {bot['id']}" in again.stderr

    refuse = cli(hosted_env, "admin", "destroy", bot["id"])  # no tty, no --yes
    assert refuse.returncode == 1 and "--yes" in refuse.stderr
    assert cli_json(hosted_env, "admin", "destroy", bot["id"], "--yes")["changed"] is True
    twice = cli_json(hosted_env, "admin", "destroy", bot["id"], "--yes")
    assert twice["changed"] is False and "already destroyed" in twice["message"]
    for action in ("resume", "restart", "suspend"):
        proc = cli(hosted_env, "admin", action, bot["id"])
        assert proc.returncode == 1 and "destroyed" in proc.stderr
    # a destroyed bot releases its token: it can be hosted again, as a new bot
    reborn = cli_json(hosted_env, "admin", "deploy", "--token", token, "--owner", "777")
    assert reborn["id"] != bot["id"] and reborn["status"] == "running"


def test_suspend_and_resume_are_idempotent(
    hosted_env: dict[str, str], telegram: FakeTelegram
) -> None:
    bot = cli_json(
        hosted_env, "admin", "deploy", "--token", telegram.add_bot().token, "--owner", OWNER
    )
    assert cli_json(hosted_env, "admin", "suspend", bot["id"])["changed"] is True
    assert cli_json(hosted_env, "admin", "suspend", bot["id"])["changed"] is False
    assert cli_json(hosted_env, "admin", "resume", bot["id"])["changed"] is True
    assert cli_json(hosted_env, "admin", "resume", bot["id"])["changed"] is False
    assert cli_json(hosted_env, "admin", "restart", bot["id"])["status"] == "running"


def test_docker_down_then_back(
    hosted_env: dict[str, str],
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    token = telegram.add_bot().token
    down = {**hosted_env, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    proc = cli(down, "admin", "deploy", "--token", token, "--owner", OWNER)
    assert proc.returncode == 1
    assert "Docker is not reachable" in proc.stderr and "retry" in proc.stderr
    assert _bots(hosted_env) == []  # nothing claimed, certainly no "running" bot

    bot = cli_json(hosted_env, "admin", "deploy", "--token", token, "--owner", OWNER)
    assert bot["status"] == "running"
    # every other command says the same while Docker is away, and changes nothing
    for action in ("restart", "destroy", "logs"):
        proc = cli(down, "admin", action, bot["id"], *(["--yes"] if action == "destroy" else []))
        assert proc.returncode == 1 and "Docker is not reachable" in proc.stderr, action
    assert [b["status"] for b in _bots(hosted_env)] == ["running"]
    assert _containers(docker_client, bot["id"]) == ["running"]
    # but the kill switch holds: suspended (the meter refuses it), the container to follow
    proc = cli(down, "admin", "suspend", bot["id"])
    assert proc.returncode == 0, proc.stderr
    assert "its container is not stopped yet: Docker is not reachable" in proc.stdout
    assert "The reconciler stops it when Docker answers again" in proc.stdout
    assert [b["status"] for b in _bots(hosted_env)] == ["suspended"]
    assert _containers(docker_client, bot["id"]) == ["running"]


def test_image_missing(hosted_env: dict[str, str], telegram: FakeTelegram) -> None:
    env = {**hosted_env, "NULLCLAW_IMAGE": "storebot-test/nullclaw:does-not-exist"}
    proc = cli(env, "admin", "deploy", "--token", telegram.add_bot().token, "--owner", OWNER)
    assert proc.returncode == 1
    assert "docker pull storebot-test/nullclaw:does-not-exist" in proc.stderr
    assert _bots(hosted_env) == []


def test_never_healthy(
    hosted_env: dict[str, str], telegram: FakeTelegram, docker_client: docker.DockerClient
) -> None:
    env = {**hosted_env, "NULLCLAW_IMAGE": UNHEALTHY_IMAGE, "HEALTH_TIMEOUT_SECONDS": "2"}
    proc = cli(env, "admin", "deploy", "--token", telegram.add_bot().token, "--owner", OWNER)
    assert proc.returncode == 1
    assert "did not become healthy" in proc.stderr
    assert "provider misconfigured" in proc.stderr  # the operator sees the last log lines
    [bot] = _bots(hosted_env)
    assert bot["status"] == "failed"
    assert _containers(docker_client, bot["id"]) == ["exited"]  # stopped: no CPU burnt
    shown = cli_json(hosted_env, "admin", "show", bot["id"])
    assert "/health" in shown["status_reason"]
    logs = cli(hosted_env, "admin", "logs", bot["id"])
    assert "provider misconfigured" in logs.stdout


def test_logs_redact_tokens(hosted_env: dict[str, str], telegram: FakeTelegram) -> None:
    token = telegram.add_bot().token
    bot = cli_json(hosted_env, "admin", "deploy", "--token", token, "--owner", OWNER)
    out = cli(hosted_env, "admin", "logs", bot["id"])
    assert out.returncode == 0
    assert "polling with token <redacted>" in out.stdout  # the stand-in prints its token
    assert token not in out.stdout


def test_racing_deploys_of_one_token(
    hosted_env: dict[str, str], telegram: FakeTelegram, docker_client: docker.DockerClient
) -> None:
    token = telegram.add_bot().token
    full = {"PATH": "/usr/bin:/bin", "HOME": "/root", **hosted_env}
    args = [sys.executable, "-m", "storebot", "admin", "deploy", "--token", token, "--owner", OWNER]
    procs = [
        subprocess.Popen(
            args, env=full, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in procs]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "being deployed right now" in loser or "already runs as bot" in loser
    [bot] = _bots(hosted_env)
    assert bot["status"] == "running"
    assert _containers(docker_client, bot["id"]) == ["running"]


def test_crash_mid_deploy_is_taken_over_with_fresh_secrets(
    hosted_env: dict[str, str],
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
    services: Services,
) -> None:
    """A deploy killed while its container runs leaves `deploying`; a later deploy of the
    same token takes the bot over, and the container it leaves answers to the NEW
    gateway token (the config was rewritten, so the container must be re-created)."""
    token = telegram.add_bot().token
    # the probe URL points nowhere: the container starts and runs, the wait never ends
    slow = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        **hosted_env,
        "HEALTH_PROBE_URL": "http://127.0.0.1:9",
        "HEALTH_TIMEOUT_SECONDS": "60",
    }
    args = [sys.executable, "-m", "storebot", "admin", "deploy", "--token", token, "--owner", OWNER]
    proc = subprocess.Popen(
        args, env=slow, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # crash once its container runs
        bots = _bots(hosted_env)
        if bots and _containers(docker_client, bots[0]["id"]) == ["running"]:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    [bot] = _bots(hosted_env)
    assert bot["status"] == "deploying"
    assert _containers(docker_client, bot["id"]) == ["running"]

    busy = cli(hosted_env, "admin", "deploy", "--token", token, "--owner", OWNER)
    assert busy.returncode == 1 and "being deployed right now" in busy.stderr
    time.sleep(0.6)
    done = cli_json(
        {**hosted_env, "DEPLOY_STALE_SECONDS": "0.5"},
        "admin",
        "deploy",
        "--token",
        token,
        "--owner",
        OWNER,
    )
    assert done["id"] == bot["id"] and done["status"] == "running"
    assert _containers(docker_client, bot["id"]) == ["running"]
    host = f"{bot['id']}.bots.storebot.test"
    auth = {"Authorization": f"Bearer {done['gateway_token']}"}
    hook = get(
        services.web_url, host, "/webhook", method="POST", headers=auth, json={"message": "hi"}
    )
    assert hook.status_code == 200
    events = json.dumps(cli_json(hosted_env, "admin", "show", bot["id"])["events"])
    assert "deploy retried" in events


def test_restart_never_lifts_a_suspension(
    hosted_env: dict[str, str], telegram: FakeTelegram, docker_client: docker.DockerClient
) -> None:
    bot = cli_json(
        hosted_env, "admin", "deploy", "--token", telegram.add_bot().token, "--owner", OWNER
    )
    cli_json(hosted_env, "admin", "suspend", bot["id"], "--reason", "abuse")
    proc = cli(hosted_env, "admin", "restart", bot["id"])
    assert proc.returncode == 1 and "use resume" in proc.stderr
    assert [b["status"] for b in _bots(hosted_env)] == ["suspended"]
    assert _containers(docker_client, bot["id"]) == ["exited"]


def test_resume_refuses_a_token_revoked_meanwhile(
    hosted_env: dict[str, str], telegram: FakeTelegram, docker_client: docker.DockerClient
) -> None:
    tg_bot = telegram.add_bot()
    bot = cli_json(hosted_env, "admin", "deploy", "--token", tg_bot.token, "--owner", OWNER)
    cli_json(hosted_env, "admin", "suspend", bot["id"])
    telegram.revoke(tg_bot.token)
    proc = cli(hosted_env, "admin", "resume", bot["id"])
    assert proc.returncode == 1 and "Telegram rejected this token" in proc.stderr
    assert [b["status"] for b in _bots(hosted_env)] == ["suspended"]
    assert _containers(docker_client, bot["id"]) == ["exited"]  # no spinning container


def test_check_says_what_to_fix(
    hosted_env: dict[str, str], tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    ok = cli(hosted_env, "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok" in ok.stdout
    broken = {
        **hosted_env,
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
        "DATABASE_URL": f"sqlite:///{tmp_path}/fresh.db",
    }
    bad = cli(broken, "check")
    assert bad.returncode == 1
    assert "Docker is not reachable" in bad.stdout
    assert "run `storebot migrate`" in bad.stdout
    missing = cli({**hosted_env, "NULLCLAW_IMAGE": "storebot-test/nope:1"}, "check")
    assert missing.returncode == 1 and "docker pull storebot-test/nope:1" in missing.stdout


def test_destroy_keeps_data_for_the_retention_period(
    hosted_env: dict[str, str], telegram: FakeTelegram
) -> None:
    env = {**hosted_env, "DATA_RETENTION_DAYS": "7"}
    bot = cli_json(env, "admin", "deploy", "--token", telegram.add_bot().token, "--owner", OWNER)
    home = Path(env["DATA_ROOT"]) / bot["id"]
    gone = cli_json(env, "admin", "destroy", bot["id"], "--yes")
    assert "data kept until" in gone["message"]
    assert home.is_dir()
    assert cli_json(env, "admin", "purge-data") == []  # not due yet
    assert home.is_dir()
    # a week passes (the only clock here is the row's purge date)
    engine = make_engine(env["DATABASE_URL"])
    with session(engine) as s:
        row = s.get(Bot, bot["id"])
        assert row is not None and row.data_purge_after is not None
        row.data_purge_after = utcnow() - timedelta(seconds=1)
        s.add(row)
        s.commit()
    engine.dispose()
    assert cli_json(env, "admin", "purge-data") == [bot["id"]]
    assert not home.exists()
    assert cli_json(env, "admin", "purge-data") == []
