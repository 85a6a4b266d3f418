"""Running storebot's service in the test's loop, and a customer who talks to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from storebot.chat import keyboards as kb
from storebot.runner import build_management, serve
from storebot.settings import Settings
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import free_port, until_answers

SHOP_KEY, SHOP_HOOK = "sk_test_chatonly0123456789", "whsec_chatonly"


def shop_env(shop_token: str, stripe: FakeStripe | None = None) -> dict[str, Any]:
    """What `storebot run` needs beyond the engine's settings: its own token, Stripe
    keys (the fake's API when given) and a free port for its web app."""
    env: dict[str, Any] = {
        "STOREBOT_BOT_TOKEN": shop_token,
        "STRIPE_SECRET_KEY": SHOP_KEY,
        "STRIPE_WEBHOOK_SECRET": SHOP_HOOK,
        "WEB_PORT": free_port(),
    }
    if stripe is not None:
        env["STRIPE_API_BASE"] = stripe.base_url
    return env


@asynccontextmanager
async def storebot(settings: Settings) -> AsyncIterator[str]:
    """Run `storebot run`'s service in this loop; yields the Stripe webhook URL."""
    m = build_management(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(m, stop))
    url = f"http://{settings.WEB_HOST}:{settings.WEB_PORT}"
    async with httpx.AsyncClient() as client:
        await until_answers(client, f"{url}/healthz")
    try:
        yield f"{url}/stripe/webhook"
    finally:
        stop.set()
        await task


class Chat:
    """One customer's chat with the management bot, through the Telegram fake."""

    def __init__(self, telegram: FakeTelegram, shop_token: str, user_id: int) -> None:
        self.tg, self.token, self.user = telegram, shop_token, user_id
        self.seen = 0

    def send(self, text: str) -> dict[str, Any]:
        return self.tg.send_text(self.token, self.user, text)

    def press(self, message: dict[str, Any], data: Any) -> str:
        return self.tg.press_button(self.token, self.user, message["message_id"], data.pack())

    async def says(self, snippet: str, timeout: float = 30) -> dict[str, Any]:
        """The next thing the bot says (or edits) that contains `snippet`."""
        msg = await self.tg.await_message(
            self.token, self.user, snippet, since=self.seen, timeout=timeout
        )
        # past that entry only: what the bot said right after it is still to be read
        said = self.tg.sent(self.token, self.user)
        self.seen = next(i for i in range(self.seen, len(said)) if snippet in said[i]) + 1
        return msg

    async def order_hosting(self, plan: str = "standard") -> dict[str, Any]:
        """/newbot, choose `plan`, accept the terms: the message with the payment link."""
        self.send("/newbot")
        self.press(await self.says("Choose a plan"), kb.PlanChosen(name=plan))
        self.press(await self.says("Terms of service"), kb.TermsAccepted(plan=plan))
        return await self.says("Pay with the button below")

    def transcript(self) -> list[str]:
        return self.tg.sent(self.token, self.user)


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return [b for row in rows for b in row]


@dataclass
class Shop:
    """A running management bot (no Docker needed) with its Telegram and Stripe fakes."""

    telegram: FakeTelegram
    stripe: FakeStripe
    token: str
    webhook: str
    settings: Settings

    def chat(self, user: int) -> Chat:
        return Chat(self.telegram, self.token, user)

    async def reach_payment(self, chat: Chat) -> dict[str, Any]:
        return await chat.order_hosting()

    async def pay(self, session_id: str) -> dict[str, Any]:
        """The customer pays on Stripe's page; Stripe's webhook reaches storebot."""
        event = self.stripe.complete_checkout(session_id)
        status, text = await self.stripe.adeliver(event, self.webhook, SHOP_HOOK)
        assert status == 200, text
        return event
