"""The Bot API calls storebot makes itself (token checks), at TELEGRAM_API_BASE."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from storebot.errors import TelegramUnavailable, TokenRejected


@dataclass(frozen=True)
class TelegramBot:
    id: int
    username: str
    first_name: str


class BotApi:
    def __init__(self, base_url: str, client: httpx.AsyncClient) -> None:
        self._base = base_url.rstrip("/")
        self._client = client

    async def get_me(self, token: str) -> TelegramBot:
        try:
            resp = await self._client.get(f"{self._base}/bot{token}/getMe", timeout=10)
        except httpx.HTTPError as exc:
            raise TelegramUnavailable(
                f"Telegram did not answer ({type(exc).__name__}); try again in a minute."
            ) from None
        if resp.status_code in (401, 404):
            raise TokenRejected(
                "Telegram rejected this token: it is wrong or was revoked. Open @BotFather, "
                "choose your bot, 'API Token', and paste the current token."
            )
        try:
            body = resp.json()
            me = body["result"]
            if resp.status_code != 200 or not body.get("ok") or not me.get("is_bot"):
                raise ValueError(body)
            return TelegramBot(
                id=int(me["id"]), username=me["username"], first_name=me["first_name"]
            )
        except (ValueError, KeyError, TypeError):
            raise TelegramUnavailable(
                f"Telegram answered getMe with HTTP {resp.status_code} and no usable bot; "
                "try again in a minute."
            ) from None
