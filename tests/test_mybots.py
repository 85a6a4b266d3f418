"""/mybots: a customer manages their running bot through the fake Telegram.

The real dispatcher (customer router plus the /mybots router) polls the Telegram fake;
the bot runs on the real Docker engine behind the real Traefik. Another customer's
forged buttons are refused and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import docker
import httpx
import pytest
from aiogram.filters.callback_data import CallbackData

from storebot import bot_ops
from storebot.app import build_hosting
from storebot.bot_files import config_digest
from storebot.chat import keyboards as kb
from storebot.chat.mybots import Act, BotAction, DestroyConfirmed, fit
from storebot.deploy import DeployResult, deploy
from storebot.errors import DeployInProgress, InvalidTransition, StateChanged
from storebot.hosting import Hosting
from storebot.models import Bot, BotStatus
from storebot.settings import Settings
from tests.chat_helpers import storebot
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services, free_port

STRIPE_KEY = "sk_test_mybots0123456789"

ALICE, MALLORY = 5550501, 5550502


@dataclass
class Shop:
    """The management bot, polling the fake, with one customer's view of the chat."""

    h: Hosting
    tg: FakeTelegram
    token: str
    web_url: str
    seen: dict[int, int] = field(default_factory=dict)

    async def says(self, user: int, snippet: str) -> dict[str, Any]:
        msg = await self.tg.await_message(
            self.token, user, snippet, since=self.seen.get(user, 0), timeout=40
        )
        self.seen[user] = len(self.tg.sent(self.token, user))
        return msg

    def press(
        self, user: int, msg: dict[str, Any], data: CallbackData, *, strict: bool = True
    ) -> str:
        return self.tg.press_button(self.token, user, msg["message_id"], data.pack(), strict=strict)

    async def answered(self, query_id: str) -> dict[str, Any]:
        return await self.tg.await_for(lambda: self.tg.callback_answer(query_id) or {})

    async def deploy_for(self, owner: int) -> DeployResult:
        return await deploy(
            self.h, token=self.tg.add_bot().token, owner_telegram_id=owner, actor="test"
        )

    def bot(self, bot_id: str) -> Bot:
        with self.h.session() as s:
            found = s.get(Bot, bot_id)
            assert found is not None
            return found

    async def webhook(self, bot_id: str, gateway_token: str) -> int:
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"{self.web_url}/webhook",
                json={"message": "hi"},
                headers={
                    "Host": self.h.settings.bot_host(bot_id),
                    "Authorization": f"Bearer {gateway_token}",
                },
            )
        return r.status_code


def _settings(services: Services, telegram: FakeTelegram, db: str, **extra: Any) -> Settings:
    env = services.env(telegram, db) | {"THROTTLE_PER_MINUTE": "600"}
    env |= {k: str(v) for k, v in extra.items()}
    return Settings(_env_file=None, **env)  # type: ignore[arg-type]


@pytest.fixture
async def shop(services: Services, telegram: FakeTelegram, migrated_db: str) -> AsyncIterator[Shop]:
    """storebot's service exactly as `storebot run` composes it (runner.build_management)."""
    token = telegram.add_bot(username="storebot_shop_bot").token
    with FakeStripe(api_key=STRIPE_KEY) as stripe:
        settings = _settings(
            services,
            telegram,
            migrated_db,
            STOREBOT_BOT_TOKEN=token,
            STRIPE_SECRET_KEY=STRIPE_KEY,
            STRIPE_WEBHOOK_SECRET="whsec_mybots",
            STRIPE_API_BASE=stripe.base_url,
            WEB_PORT=free_port(),
        )
        h = build_hosting(settings)
        try:
            async with storebot(settings):
                yield Shop(h, telegram, token, services.web_url)
        finally:
            await h.aclose()


def buttons(message: dict[str, Any]) -> dict[str, str]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return {b["text"]: b["callback_data"] for row in rows for b in row}


@pytest.mark.docker
@pytest.mark.traefik
async def test_customer_manages_their_bot(shop: Shop, docker_client: docker.DockerClient) -> None:
    T, tg = shop.token, shop.tg
    tg.send_text(T, ALICE, "/mybots")
    await shop.says(ALICE, "no assistants yet. Send /newbot")

    out = await shop.deploy_for(ALICE)
    with shop.h.session() as s:
        row = shop.h.get_bot(s, out.id)
        row.paid_until = datetime(2031, 1, 2, tzinfo=UTC)
        s.commit()

    tg.send_text(T, ALICE, "/start")  # the menu's "My bots" button lists them too
    menu = await shop.says(ALICE, "Welcome!")
    shop.press(ALICE, menu, kb.Menu(action="mybots"))
    card = await shop.says(ALICE, f"Bot {out.id}: @{out.telegram_username}")
    for line in ("Status: running", "Plan: standard", "Paid until: 2031-01-02", out.url):
        assert line in card["text"]
    assert buttons(card) == {
        "Restart": BotAction(act=Act.restart, bot_id=out.id).pack(),
        "New gateway token": BotAction(act=Act.token, bot_id=out.id).pack(),
        "Recent logs": BotAction(act=Act.logs, bot_id=out.id).pack(),
        "Destroy": BotAction(act=Act.destroy, bot_id=out.id).pack(),
    }

    # a new gateway token: shown once, the only one that works
    shop.press(ALICE, card, BotAction(act=Act.token, bot_id=out.id))
    shown = await shop.says(ALICE, "New gateway token for bot")
    new_token = shown["text"].split("\n")[1]
    assert new_token.startswith("sbgw_") and "shown only this once" in shown["text"]
    assert any("Making a new gateway token" in t for t in tg.history(T, ALICE, shown["message_id"]))
    assert await shop.webhook(out.id, new_token) == 200
    assert await shop.webhook(out.id, out.gateway_token) == 401

    # recent logs, without the customer's Telegram token
    shop.press(ALICE, card, BotAction(act=Act.logs, bot_id=out.id))
    logs = await shop.says(ALICE, f"Recent logs of bot {out.id}")
    assert "polling with token <redacted>" in logs["text"]
    tg_token = shop.h.tokens.open(shop.bot(out.id).token_encrypted or "")
    assert tg_token not in logs["text"]

    shop.press(ALICE, card, BotAction(act=Act.restart, bot_id=out.id))
    await shop.says(ALICE, f"Bot {out.id} restarted and answering again")
    assert await shop.webhook(out.id, new_token) == 200

    # Mallory forges Alice's buttons: refused, nothing happens
    container = docker_client.containers.get(out.container)
    events = len(bot_ops_events(shop, out.id))
    for forged in (
        BotAction(act=Act.destroy, bot_id=out.id),
        BotAction(act=Act.token, bot_id=out.id),
        BotAction(act=Act.restart, bot_id=out.id),
        BotAction(act=Act.logs, bot_id=out.id),
        DestroyConfirmed(bot_id=out.id, yes=True),
    ):
        query = shop.press(MALLORY, {"message_id": 1}, forged, strict=False)
        answer = await shop.answered(query)
        assert answer.get("text") == "That is not your bot." and answer.get("show_alert")
    assert tg.sent(T, MALLORY) == []
    assert shop.bot(out.id).status is BotStatus.running
    assert len(bot_ops_events(shop, out.id)) == events
    assert docker_client.containers.get(out.container).id == container.id
    assert await shop.webhook(out.id, new_token) == 200

    # destroy asks first; "Keep it" keeps it
    shop.press(ALICE, card, BotAction(act=Act.destroy, bot_id=out.id))
    ask = await shop.says(ALICE, f"Destroy bot {out.id}")
    assert set(buttons(ask)) == {"Yes, destroy it", "Keep it"}
    shop.press(ALICE, ask, DestroyConfirmed(bot_id=out.id, yes=False))
    await shop.says(ALICE, "Kept")
    assert tg.message(T, ALICE, ask["message_id"]).get("reply_markup") is None  # type: ignore[union-attr]
    assert shop.bot(out.id).status is BotStatus.running
    assert docker_client.containers.get(out.container).status == "running"

    shop.press(ALICE, card, BotAction(act=Act.destroy, bot_id=out.id))
    ask = await shop.says(ALICE, f"Destroy bot {out.id}")
    shop.press(ALICE, ask, DestroyConfirmed(bot_id=out.id, yes=True))
    await shop.says(ALICE, f"Bot {out.id} destroyed")
    assert shop.bot(out.id).status is BotStatus.destroyed
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(out.container)

    # a stale button of the destroyed bot says why nothing happens
    shop.press(ALICE, card, BotAction(act=Act.restart, bot_id=out.id))
    await shop.says(ALICE, "was not restarted: only a running or failed bot")
    tg.send_text(T, ALICE, "/mybots")
    await shop.says(ALICE, "no assistants yet")


def bot_ops_events(shop: Shop, bot_id: str) -> list[Any]:
    with shop.h.session() as s:
        return shop.h.events(s, bot_id, limit=100)


@pytest.mark.docker
@pytest.mark.traefik
async def test_rotate_gateway_token(
    services: Services,
    telegram: FakeTelegram,
    migrated_db: str,
    docker_client: docker.DockerClient,
) -> None:
    h = build_hosting(_settings(services, telegram, migrated_db))
    shop = Shop(h, telegram, "", services.web_url)
    try:
        out = await shop.deploy_for(ALICE)
        before = shop.bot(out.id)
        old_container = docker_client.containers.get(out.container).id

        new = await bot_ops.rotate_gateway_token(h, out.id, actor="test")
        after = shop.bot(out.id)
        assert new != out.gateway_token and after.status is BotStatus.running
        assert after.gateway_token_hash == hashlib.sha256(new.encode()).hexdigest()
        assert after.llm_token_hash != before.llm_token_hash
        assert docker_client.containers.get(out.container).id != old_container  # re-created
        assert await shop.webhook(out.id, new) == 200
        assert await shop.webhook(out.id, out.gateway_token) == 401
        with h.session() as s:
            assert h.events(s, out.id)[0].reason == "new gateway token"

        # a double tap: one rotation runs, the other is refused; the winner's token works
        results = await asyncio.gather(
            bot_ops.rotate_gateway_token(h, out.id, actor="test"),
            bot_ops.rotate_gateway_token(h, out.id, actor="test"),
            return_exceptions=True,
        )
        [won] = [r for r in results if isinstance(r, str)]
        assert [type(r) for r in results if not isinstance(r, str)] == [DeployInProgress]
        assert await shop.webhook(out.id, won) == 200
        assert await shop.webhook(out.id, new) == 401

        # only a running bot: a suspended one keeps its config and stays down
        await bot_ops.suspend(h, out.id, actor="test")
        digest = config_digest(h.settings.DATA_ROOT, out.id)
        with pytest.raises(InvalidTransition, match="only a running bot"):
            await bot_ops.rotate_gateway_token(h, out.id, actor="test")
        assert config_digest(h.settings.DATA_ROOT, out.id) == digest
        assert docker_client.containers.get(out.container).status == "exited"
    finally:
        await h.aclose()


@pytest.mark.docker
@pytest.mark.traefik
async def test_a_suspension_during_rotation_stands(
    services: Services,
    telegram: FakeTelegram,
    migrated_db: str,
    docker_client: docker.DockerClient,
) -> None:
    h = build_hosting(_settings(services, telegram, migrated_db, HEALTH_TIMEOUT_SECONDS=5))
    shop = Shop(h, telegram, "", services.web_url)
    try:
        out = await shop.deploy_for(ALICE)
        old = docker_client.containers.get(out.container).id
        rotation = asyncio.create_task(bot_ops.rotate_gateway_token(h, out.id, actor="test"))
        for _ in range(500):  # the operator acts once the new container is up
            with contextlib.suppress(docker.errors.NotFound):
                now = docker_client.containers.get(out.container)
                if now.id != old and now.status == "running":
                    break
            await asyncio.sleep(0.02)
        await bot_ops.suspend(h, out.id, actor="operator")
        with contextlib.suppress(StateChanged):  # unless it had finished just before
            await rotation
        assert shop.bot(out.id).status is BotStatus.suspended
        assert docker_client.containers.get(out.container).status == "exited"
    finally:
        await h.aclose()


def test_callback_data_fits_telegram() -> None:
    longest = "z" * 16  # Bot.id is at most 16 characters
    for act in Act:
        assert len(BotAction(act=act, bot_id=longest).pack().encode()) < 64
    for yes in (True, False):
        assert len(DestroyConfirmed(bot_id=longest, yes=yes).pack().encode()) < 64


def test_long_logs_keep_their_newest_lines() -> None:
    text = "Recent logs:\n" + "\n".join(f"line {i} \U0001f600" for i in range(2000))
    short = fit(text)
    assert len(short.encode("utf-16-le")) // 2 <= 4096
    assert short.startswith("Recent logs:\n...") and short.endswith("line 1999 \U0001f600")
    assert fit("short") == "short"
