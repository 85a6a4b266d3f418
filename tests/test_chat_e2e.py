"""A customer, through the fake Telegram, from /start to a running assistant.

The real dispatcher polls the Telegram fake, the real web app takes Stripe's signed
webhook from the Stripe fake, and the bot is deployed on the real Docker engine
behind the real Traefik. storebot is restarted right after the payment: the customer
is asked for the token again and never charged twice.
"""

from __future__ import annotations

import httpx
import pytest

from storebot.app import build_hosting
from storebot.chat import keyboards as kb
from storebot.deploy import deploy
from storebot.settings import Settings
from tests.chat_helpers import Chat, buttons, storebot
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services, free_port

pytestmark = [pytest.mark.docker, pytest.mark.traefik]
KEY, HOOK = "sk_test_chat0123456789", "whsec_chat"
ALICE = 5550401


async def test_customer_from_start_to_running_assistant(
    services: Services, telegram: FakeTelegram, migrated_db: str
) -> None:
    shop = telegram.add_bot(username="storebot_shop_bot")
    customer_bot = telegram.add_bot(username="alice_assistant_bot")
    with FakeStripe(api_key=KEY) as stripe:
        env = services.env(
            telegram,
            migrated_db,
            STOREBOT_BOT_TOKEN=shop.token,
            STRIPE_SECRET_KEY=KEY,
            STRIPE_WEBHOOK_SECRET=HOOK,
            STRIPE_API_BASE=stripe.base_url,
            WEB_PORT=free_port(),
        )
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        T = shop.token
        alice = Chat(telegram, T, ALICE)
        says, press = alice.says, alice.press

        async with storebot(settings) as webhook:
            assert {c["command"] for c in telegram.commands(T)} >= {"start", "newbot", "cancel"}
            telegram.send_text(T, ALICE, "/start")
            menu = await says("Welcome!")
            press(menu, kb.Menu(action="newbot"))
            plans = await says("Choose a plan")
            press(plans, kb.PlanChosen(name="standard"))
            terms = await says("Terms of service")
            assert "suspend or delete a bot suspected of abuse" in terms["text"]
            press(terms, kb.TermsAccepted(plan="standard"))
            pay = await says("Pay with the button below")
            [button] = buttons(pay)
            assert button["url"].startswith(stripe.base_url)

            telegram.send_text(T, ALICE, customer_bot.token)  # a token before paying
            await says("not paid yet")

            [session_id] = stripe.sessions
            event = stripe.complete_checkout(session_id)
            assert (await stripe.adeliver(event, webhook, HOOK))[0] == 200
            await says("Payment received")

        # storebot restarts right after the payment: nothing is lost, nothing charged twice
        async with storebot(settings) as webhook:
            assert (await stripe.adeliver(event, webhook, HOOK))[0] == 200  # redelivered
            telegram.send_text(T, ALICE, "/newbot")
            await says("Payment received")  # asked for the token, not for money again
            assert len(stripe.sessions) == 1

            telegram.send_sticker(T, ALICE)
            await says("expecting your bot's token")
            own = telegram.send_text(T, ALICE, shop.token)
            await says("my own token")
            assert telegram.is_deleted(T, ALICE, own["message_id"])
            telegram.send_text(T, ALICE, "hello")
            await says("not a Telegram bot token")
            revoked = telegram.add_bot()
            telegram.revoke(revoked.token)
            telegram.send_text(T, ALICE, revoked.token)
            await says("Telegram rejected this token")
            taken = telegram.add_bot()  # already hosted here, for another customer
            other = build_hosting(settings)
            try:
                await deploy(other, token=taken.token, owner_telegram_id=777, actor="admin")
            finally:
                await other.aclose()
            telegram.send_text(T, ALICE, taken.token)
            await says("already hosted here for another customer")

            sent = telegram.send_text(T, ALICE, customer_bot.token)
            live = await says("Your assistant is live")
            assert telegram.is_deleted(T, ALICE, sent["message_id"])
            assert "t.me/alice_assistant_bot" in live["text"]
            gateway_token = live["text"].split("Gateway token: ")[1].split("\n")[0]
            url = live["text"].split("Gateway URL: ")[1].split("\n")[0]
            history = telegram.history(T, ALICE, live["message_id"])
            assert any("starting its container" in h for h in history)  # one message, edited

        host = url.removeprefix("http://").rstrip("/")
        async with httpx.AsyncClient() as client:
            ok = await client.post(
                f"{services.web_url}/webhook",
                json={"message": "hi"},
                headers={"Host": host, "Authorization": f"Bearer {gateway_token}"},
            )
        assert ok.status_code == 200

        transcript = telegram.sent(T, ALICE)
        order = [
            "Welcome!",
            "Choose a plan",
            "Terms of service",
            "Pay with the button",
            "not paid yet",
            "Payment received",
            "Payment received",
            "expecting your bot's token",
            "my own token",
            "not a Telegram bot token",
            "Telegram rejected this token",
            "already hosted here for another customer",
            "Setting up your assistant",
            "Your assistant is live",
        ]
        positions = [
            next(i for i, t in enumerate(transcript) if snippet in t and i >= start)
            for start, snippet in _walk(order, transcript)
        ]
        assert positions == sorted(positions)


def _walk(snippets: list[str], transcript: list[str]) -> list[tuple[int, str]]:
    """Pair each expected snippet with the index to search from (after the previous)."""
    out, start = [], 0
    for snippet in snippets:
        out.append((start, snippet))
        start = next(i for i, t in enumerate(transcript) if snippet in t and i >= start) + 1
    return out
