"""Deploy through the admin CLI, then use the bot through the real Traefik and Docker."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
from sqlmodel import select

from storebot.db import make_engine, session
from storebot.models import Bot
from tests.cli_helpers import cli, cli_json, get, wait_status
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services

pytestmark = [pytest.mark.docker, pytest.mark.traefik]
OWNER = 5550001


def test_deploy_route_suspend_resume_destroy(
    hosted_env: dict[str, str],
    services: Services,
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
) -> None:
    tg_bot = telegram.add_bot()
    out = cli_json(hosted_env, "admin", "deploy", "--token", tg_bot.token, "--owner", str(OWNER))
    assert out["status"] == "running"
    assert set(out) >= {"id", "status", "url", "gateway_token", "container"}
    bot_id, token = out["id"], out["gateway_token"]
    host = f"{bot_id}.bots.storebot.test"
    assert out["url"] == f"http://{host}/"
    web = services.web_url

    # only /health, /ready and /webhook are routed; the webhook needs the gateway token
    assert get(web, host, "/health").status_code == 200
    assert get(web, host, "/ready").status_code == 200
    hook = {"method": "POST", "json": {"message": "hi"}}
    assert get(web, host, "/webhook", **hook).status_code == 401
    ok = get(web, host, "/webhook", headers={"Authorization": f"Bearer {token}"}, **hook)
    assert ok.status_code == 200 and ok.json() == {"status": "received"}
    bad = get(web, host, "/webhook", headers={"Authorization": f"Bearer {token}x"}, **hook)
    assert bad.status_code == 401
    # the stand-in answers these itself (200, or 409 for /pair): 404 means Traefik hid them
    for hidden in ("/telegram", "/pair", "/whatsapp", "/slack/events"):
        assert get(web, host, hidden, method="POST").status_code == 404, hidden
    assert get(web, "nope.bots.storebot.test", "/health").status_code == 404

    # secrets: the gateway and customer tokens are nowhere in the database in clear
    shown = cli_json(hosted_env, "admin", "show", bot_id)
    assert token not in json.dumps(shown)
    assert shown["owner_telegram_id"] == OWNER
    engine = make_engine(hosted_env["DATABASE_URL"])
    with session(engine) as s:
        row = s.get(Bot, bot_id)
        assert row is not None
        assert row.gateway_token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert row.token_encrypted and tg_bot.token not in row.token_encrypted
        dump = json.dumps([r.model_dump(mode="json") for r in s.exec(select(Bot))])
    engine.dispose()
    assert token not in dump and tg_bot.token not in dump

    # a burst far past DEFAULT_RATE_LIMIT_BURST (20) meets 429s, and only after the burst
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: get(web, host, "/health").status_code, range(60)))
    assert codes.count(429) >= 20, codes
    assert codes.count(200) >= 15, codes

    assert cli(hosted_env, "admin", "suspend", bot_id, "--reason", "test").returncode == 0
    assert wait_status(web, host, "/health", 404) == 404
    assert docker_client.containers.get(out["container"]).status == "exited"

    resumed = cli_json(hosted_env, "admin", "resume", bot_id)
    assert resumed["status"] == "running"
    assert wait_status(web, host, "/health", 200) == 200

    listed = cli_json(hosted_env, "admin", "list")
    assert {
        "id": bot_id,
        "status": "running",
        "url": out["url"],
        "container": out["container"],
    }.items() <= listed[0].items()

    gone = cli_json(hosted_env, "admin", "destroy", bot_id, "--yes")
    assert gone["status"] == "destroyed"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(out["container"])
    assert not (Path(hosted_env["DATA_ROOT"]) / bot_id).exists()
    assert wait_status(web, host, "/health", 404) == 404

    events = [(e["from"], e["to"]) for e in cli_json(hosted_env, "admin", "show", bot_id)["events"]]
    assert events[::-1] == [
        (None, "deploying"),
        ("deploying", "running"),
        ("running", "suspended"),
        ("suspended", "running"),
        ("running", "destroyed"),
    ]


def test_container_is_hardened(
    hosted_env: dict[str, str], telegram: FakeTelegram, docker_client: docker.DockerClient
) -> None:
    out = cli_json(
        hosted_env, "admin", "deploy", "--token", telegram.add_bot().token, "--owner", str(OWNER)
    )
    attrs = docker_client.containers.get(out["container"]).attrs
    hc, cfg = attrs["HostConfig"], attrs["Config"]
    assert cfg["User"] == "65534:65534"
    assert hc["Init"] is True
    assert hc["ReadonlyRootfs"] is True
    assert set(hc["Tmpfs"]) == {"/tmp"}
    assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    assert hc["SecurityOpt"] == ["no-new-privileges:true"]
    assert hc["Privileged"] is False
    assert hc["PidsLimit"] == 64
    assert hc["Memory"] == 512 * 1024**2 and hc["MemorySwap"] == hc["Memory"]
    assert hc["NanoCpus"] == 1_000_000_000
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "1m"}}
    assert hc["RestartPolicy"]["Name"] == "unless-stopped"
    assert not hc["PortBindings"] and not attrs["NetworkSettings"]["Ports"]
    assert hc["NetworkMode"] == hosted_env["BOT_NETWORK"]
    assert attrs["Name"] == f"/storebot-{hosted_env['STOREBOT_INSTANCE']}-{out['id']}"
    assert cfg["Labels"]["storebot.bot-id"] == out["id"]
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert set(mounts) == {"/nullclaw-data", "/nullclaw-data/.nullclaw/config.json"}
    assert mounts["/nullclaw-data/.nullclaw/config.json"]["RW"] is False
    assert not any("docker.sock" in m["Source"] for m in attrs["Mounts"])
    home = Path(hosted_env["DATA_ROOT"]) / out["id"]
    assert (home.stat().st_uid, home.stat().st_gid) == (65534, 65534)
    config = home / ".nullclaw" / "config.json"
    assert config.stat().st_uid == 65534 and oct(config.stat().st_mode)[-3:] == "400"
    rendered = json.loads(config.read_text())
    assert rendered["channels"]["telegram"]["accounts"]["main"]["allow_from"] == [str(OWNER)]
    assert rendered["models"]["providers"]["meter"]["base_url"] == hosted_env["LLM_METER_URL"]


def test_bots_are_isolated(
    hosted_env: dict[str, str],
    services: Services,
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
) -> None:
    a = cli_json(
        hosted_env, "admin", "deploy", "--token", telegram.add_bot().token, "--owner", str(OWNER)
    )
    b = cli_json(
        hosted_env, "admin", "deploy", "--token", telegram.add_bot().token, "--owner", str(OWNER)
    )
    net = hosted_env["BOT_NETWORK"]
    b_ip = docker_client.containers.get(b["container"]).attrs["NetworkSettings"]["Networks"][net][
        "IPAddress"
    ]
    inside = docker_client.containers.get(a["container"])

    def fetch(url: str) -> tuple[int, str]:
        # busybox wget -T segfaults in Debian 1.35: bound it with timeout instead
        code, out = inside.exec_run(["timeout", "3", "wget", "-q", "-O", "-", url], user="65534")
        return code, out.decode(errors="replace")

    # the other bot's gateway is unreachable, the meter is reachable
    assert fetch(f"http://{b_ip}:3000/health")[0] != 0
    assert fetch(f"http://{services.gateway}:{services.meter_port}/") == (0, "meter")
    # nothing else of ours on this host is: another port on the same gateway address
    assert fetch(f"http://{services.gateway}:{services.forbidden_port}/")[0] != 0
    # while the host itself does reach that port (so the block is the firewall's doing)
    assert get(f"http://127.0.0.1:{services.forbidden_port}", "x", "/").text == "private"
