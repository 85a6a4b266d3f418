"""Tests of the Telegram fake itself, through real clients (httpx, aiogram)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.telegram import FakeTelegram, make_token

USER = 4242


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


def api(tg: FakeTelegram, token: str, method: str, **params: object) -> httpx.Response:
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    return httpx.post(f"{tg.base_url}/bot{token}/{method}", data=data, timeout=10)


def test_get_me_valid_revoked_unregistered_malformed(tg: FakeTelegram) -> None:
    bot = tg.add_bot(username="shop_bot")
    me = httpx.get(f"{tg.base_url}/bot{bot.token}/GETME").json()
    assert me["ok"] is True
    assert me["result"]["id"] == int(bot.token.split(":")[0]) == bot.id
    assert me["result"]["username"] == "shop_bot"
    assert me["result"]["is_bot"] is True

    unregistered = httpx.get(f"{tg.base_url}/bot{make_token()}/getMe")
    assert unregistered.status_code == 401
    assert unregistered.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}

    tg.revoke(bot.token)
    assert httpx.get(f"{tg.base_url}/bot{bot.token}/getMe").status_code == 401

    for path in ("/botnot-a-token/getMe", f"/bot{make_token()}/noSuchMethod", "/"):
        response = httpx.get(tg.base_url + path)
        assert response.status_code in (401, 404), path
        assert response.json()["ok"] is False
    assert httpx.get(tg.base_url + "/botnope/getMe").json()["error_code"] == 404
    assert [c.status for c in tg.calls_for("getMe", bot.token)] == [200, 401]


def test_send_edit_delete_transcript(tg: FakeTelegram) -> None:
    token = tg.add_bot().token
    hello = tg.send_text(token, USER, "/start", username="alice")
    assert hello["entities"][0]["type"] == "bot_command"
    assert api(tg, token, "sendMessage", text="no chat").json() == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: chat_id is empty",
    }

    keyboard = {"inline_keyboard": [[{"text": "Pay", "callback_data": "pay:basic"}]]}
    sent = api(tg, token, "sendMessage", chat_id=USER, text="<b>Deploying</b>…",
               parse_mode="HTML", reply_markup=keyboard).json()["result"]  # fmt: skip
    assert sent["message_id"] == hello["message_id"] + 1
    assert sent["text"] == "Deploying…"
    assert sent["chat"] == {
        "id": USER,
        "type": "private",
        "first_name": "Alice",
        "username": "alice",
    }
    assert sent["reply_markup"] == keyboard

    edit = {"chat_id": USER, "message_id": sent["message_id"], "text": "Done"}
    assert api(tg, token, "editMessageText", **edit).json()["result"]["text"] == "Done"
    again = api(tg, token, "editMessageText", **edit).json()
    assert again["description"].startswith("Bad Request: message is not modified")

    assert api(tg, token, "deleteMessage", chat_id=USER, message_id=hello["message_id"]).json() == {
        "ok": True,
        "result": True,
    }
    gone = api(tg, token, "deleteMessage", chat_id=USER, message_id=hello["message_id"]).json()
    assert gone["description"] == "Bad Request: message to delete not found"
    assert tg.is_deleted(token, USER, hello["message_id"])

    assert tg.sent(token, USER) == ["Deploying…", "Done"]
    [shown] = tg.chat_messages(token, USER)
    assert shown["text"] == "Done" and "reply_markup" not in shown
    assert tg.calls_for("editmessagetext")[0].params["message_id"] == sent["message_id"]
    assert (
        api(tg, token, "sendMessage", chat_id=USER, text="<p>x</p>", parse_mode="HTML")
        .json()["description"]
        .startswith("Bad Request: can't parse entities")
    )


def test_get_updates_long_poll_and_offset(tg: FakeTelegram) -> None:
    token = tg.add_bot().token
    threading.Timer(0.3, tg.send_text, args=(token, USER, "hi")).start()
    started = time.monotonic()
    first = api(tg, token, "getUpdates", timeout=5).json()["result"]
    assert 0.2 < time.monotonic() - started < 3
    assert [u["message"]["text"] for u in first] == ["hi"]

    tg.send_text(token, USER, "second")
    both = api(tg, token, "getUpdates").json()["result"]
    assert [u["message"]["text"] for u in both] == ["hi", "second"]
    rest = api(tg, token, "getUpdates", offset=both[0]["update_id"] + 1).json()["result"]
    assert [u["message"]["text"] for u in rest] == ["second"]

    started = time.monotonic()
    confirmed = api(tg, token, "getUpdates", offset=rest[0]["update_id"] + 1, timeout=1)
    assert confirmed.json() == {"ok": True, "result": []}
    assert time.monotonic() - started >= 0.9
    assert tg.pending_updates(token) == []


def test_wait_for_message_and_faults(tg: FakeTelegram) -> None:
    token = tg.add_bot().token
    threading.Timer(0.2, api, args=(tg, token, "sendMessage"), kwargs={
        "chat_id": USER, "text": "Your bot is ready"}).start()  # fmt: skip
    assert tg.wait_for_message(token, USER, "ready", timeout=5)["text"] == "Your bot is ready"
    with pytest.raises(TimeoutError, match="Your bot is ready"):
        tg.wait_for_message(token, USER, "never", timeout=0.2)

    tg.fail_next("sendMessage", status=429, retry_after=3)
    limited = api(tg, token, "sendMessage", chat_id=USER, text="x")
    assert limited.status_code == 429
    assert limited.json()["parameters"] == {"retry_after": 3}
    assert api(tg, token, "sendMessage", chat_id=USER, text="x").status_code == 200


async def test_aiogram_bot_against_fake(tg: FakeTelegram) -> None:
    aiogram = pytest.importorskip("aiogram")
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from aiogram.exceptions import TelegramBadRequest, TelegramUnauthorizedError
    from aiogram.utils.keyboard import InlineKeyboardBuilder

    fake_bot = tg.add_bot(username="aiogram_bot")
    session = AiohttpSession(api=TelegramAPIServer.from_base(tg.base_url))
    async with aiogram.Bot(fake_bot.token, session=session) as bot:
        me = await bot.get_me()
        assert (me.id, me.username) == (fake_bot.id, "aiogram_bot")

        keyboard = InlineKeyboardBuilder().button(text="Go", callback_data="go").as_markup()
        sent = await bot.send_message(USER, "<i>Pick</i>", parse_mode="HTML", reply_markup=keyboard)
        assert sent.text == "Pick" and sent.reply_markup is not None
        assert sent.reply_markup.inline_keyboard[0][0].callback_data == "go"

        query_id = tg.press_button(fake_bot.token, USER, sent.message_id, "go")
        [update] = await bot.get_updates(timeout=1)
        assert update.callback_query is not None and update.callback_query.id == query_id
        await bot.answer_callback_query(query_id, text="ok")
        assert tg.callback_answer(query_id) == {"callback_query_id": query_id, "text": "ok"}

        await bot.edit_message_text("Picked", chat_id=USER, message_id=sent.message_id)
        assert (await tg.await_message(fake_bot.token, USER, "Picked"))["text"] == "Picked"
        with pytest.raises(TelegramBadRequest, match="message is not modified"):
            await bot.edit_message_text("Picked", chat_id=USER, message_id=sent.message_id)

        tg.revoke(fake_bot.token)
        with pytest.raises(TelegramUnauthorizedError):
            await bot.get_me()
