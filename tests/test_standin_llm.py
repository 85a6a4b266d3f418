"""A deployed bot's LLM call through the (stub) meter, shaped as nullclawd makes it.

The stand-in sends what tests/standin/llm_request.py describes; the stub meter of
tests/harness.py records it and answers "stub reply" (or HTTP 500 for "please fail").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from storebot.app import build_hosting
from storebot.db import make_engine, session
from storebot.deploy import DeployResult, deploy
from storebot.models import Bot
from storebot.settings import Settings
from tests.cli_helpers import get
from tests.fakes.telegram import FakeTelegram
from tests.harness import STUB_FAIL_TEXT, STUB_REPLY, Services
from tests.standin import llm_request

OWNER = 5550003


def _deploy(env: dict[str, str], telegram: FakeTelegram) -> DeployResult:
    async def run() -> DeployResult:
        h = build_hosting(Settings(_env_file=None, **env))  # type: ignore[arg-type]
        try:
            return await deploy(
                h, token=telegram.add_bot().token, owner_telegram_id=OWNER, actor="test"
            )
        finally:
            await h.aclose()

    return asyncio.run(run())


def _config(env: dict[str, str], bot_id: str) -> Any:
    return json.loads((Path(env["DATA_ROOT"]) / bot_id / ".nullclaw" / "config.json").read_text())


def _post_webhook(services: Services, bot: DeployResult, body: bytes, token: str) -> int:
    host = f"{bot.id}.bots.storebot.test"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    r = get(services.web_url, host, "/webhook", method="POST", headers=headers, content=body)
    return r.status_code


def _wait_log(container: Any, needle: str, count: int = 1) -> str:
    deadline = time.monotonic() + 10
    while True:
        logs = container.logs().decode(errors="replace")
        if logs.count(needle) >= count or time.monotonic() > deadline:
            return logs
        time.sleep(0.05)


@pytest.mark.docker
@pytest.mark.traefik
def test_webhook_message_reaches_the_meter_as_nullclawd_sends_it(
    hosted_env: dict[str, str],
    services: Services,
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
) -> None:
    bot = _deploy(hosted_env, telegram)
    config = _config(hosted_env, bot.id)
    llm_token = config["models"]["providers"]["meter"]["api_key"]
    engine = make_engine(hosted_env["DATABASE_URL"])
    with session(engine) as s:
        row = s.get(Bot, bot.id)
        assert row is not None
        assert row.llm_token_hash == hashlib.sha256(llm_token.encode()).hexdigest()
    engine.dispose()
    provider, model = llm_request.split_primary(config["agents"]["defaults"]["model"]["primary"])
    assert (provider, model) == ("meter", hosted_env["OPENROUTER_MODEL"])

    text = "hello from the test"
    body = json.dumps({"message": text}).encode()
    assert _post_webhook(services, bot, body, bot.gateway_token + "x") == 401  # never queued
    assert _post_webhook(services, bot, body, bot.gateway_token) == 200

    [req] = services.meter.wait_for(llm_token, 1)
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.header("authorization") == f"Bearer {llm_token}"
    want_headers = llm_request.request_headers(llm_token, req.body)
    for name in ("Content-Type", "Accept", "User-Agent", "Content-Length"):
        assert req.header(name) == want_headers[name], name
    # byte for byte what nullclawd sends for this model and text
    assert req.body == llm_request.request_body(model, text)
    sent = req.json
    assert list(sent) == [
        "model",
        "messages",
        "temperature",
        "max_tokens",
        "tools",
        "tool_choice",
        "stream",
    ]
    assert sent["model"] == hosted_env["OPENROUTER_MODEL"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][-1]["content"] == text
    assert 28_000 <= len(sent["messages"][0]["content"].encode()) <= 33_000
    assert [t["function"]["name"] for t in sent["tools"]] == list(llm_request.TOOL_NAMES)
    assert len(sent["tools"]) == 14
    assert (sent["stream"], sent["tool_choice"], sent["temperature"]) == (False, "auto", 0.7)
    assert 35_000 <= len(req.body) <= 45_000

    container = docker_client.containers.get(bot.container)
    logs = _wait_log(container, f"llm reply: {STUB_REPLY}")
    assert f"llm reply: {STUB_REPLY}" in logs

    # nullclawd does not decode the "message" string: escapes reach the LLM as typed
    quirky = json.dumps({"message": 'say "hi"\tnow'}).encode()
    assert _post_webhook(services, bot, quirky, bot.gateway_token) == 200
    second = services.meter.wait_for(llm_token, 2)[-1]
    assert second.user_text == llm_request.user_text_from_webhook(quirky) == 'say \\"hi\\"\\tnow'
    assert second.body == llm_request.request_body(model, second.user_text)
    logs = _wait_log(container, f"llm reply: {STUB_REPLY}", 2)
    assert logs.count(f"llm reply: {STUB_REPLY}") == 2
    assert llm_token not in logs


@pytest.mark.docker
@pytest.mark.traefik
def test_a_failing_meter_is_retried_once_then_logged_and_the_gateway_stays_up(
    hosted_env: dict[str, str],
    services: Services,
    telegram: FakeTelegram,
    docker_client: docker.DockerClient,
) -> None:
    bot = _deploy(hosted_env, telegram)
    llm_token = _config(hosted_env, bot.id)["models"]["providers"]["meter"]["api_key"]
    container = docker_client.containers.get(bot.container)
    host = f"{bot.id}.bots.storebot.test"

    body = json.dumps({"message": f"{STUB_FAIL_TEXT}, meter"}).encode()
    assert _post_webhook(services, bot, body, bot.gateway_token) == 200
    logs = _wait_log(container, "llm error:")
    # nullclawd's agent retries a failed call once, after 0.5 s
    failed = services.meter.requests_for(llm_token)
    assert len(failed) == 2 and failed[0].body == failed[1].body
    error_lines = [line for line in logs.splitlines() if line.startswith("llm error:")]
    assert len(error_lines) == 1, logs
    assert "An error occurred. Try again." in error_lines[0]
    assert "llm reply:" not in logs and llm_token not in logs

    # still healthy, and the next message goes through
    assert get(services.web_url, host, "/health").status_code == 200
    ok = json.dumps({"message": "and now?"}).encode()
    assert _post_webhook(services, bot, ok, bot.gateway_token) == 200
    assert len(services.meter.wait_for(llm_token, 3)) == 3
    assert f"llm reply: {STUB_REPLY}" in _wait_log(container, "llm reply:")


def test_the_template_is_the_request_with_placeholders() -> None:
    model, text = "openai/gpt-4o-mini", 'a "quoted"\nline\\ \x01 é'
    filled = (
        llm_request.template()
        .replace(llm_request.MODEL_PLACEHOLDER.encode(), model.encode())
        .replace(llm_request.USER_PLACEHOLDER.encode(), llm_request.json_escape(text).encode())
    )
    body = llm_request.request_body(model, text)
    assert filled == body
    assert body == llm_request.request_body(model, text)  # deterministic
    parsed = json.loads(body)
    assert parsed["messages"][-1]["content"] == text
    assert parsed["tools"] == llm_request.tools()
    assert b"\\u0001" in body and "é".encode() in body  # escaped like appendJsonString
    streamed = json.loads(llm_request.request_body(model, text, stream=True))
    assert streamed["stream"] is True and "tools" not in streamed
    assert llm_request.chat_completions_url("http://m:1/v1/") == "http://m:1/v1/chat/completions"
    assert llm_request.user_text_from_webhook(b'{"text":"t"}') == "t"
    assert llm_request.user_text_from_webhook(b"plain") == "plain"
