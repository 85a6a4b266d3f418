"""Per-user throttle: a flood gets one polite "slow down", not a backlog or a crash."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import CallbackQuery, Message, TelegramObject

from storebot.chat import texts


class Throttle(BaseMiddleware):
    """A token bucket per user: `per_minute` on average, bursts of up to a quarter of it."""

    def __init__(self, per_minute: int) -> None:
        self._rate = per_minute / 60
        self._burst = max(3.0, per_minute / 4)
        self._buckets: dict[int, tuple[float, float, bool]] = {}  # tokens, at, warned

    def allow(self, user_id: int, now: float) -> tuple[bool, bool]:
        """(handle it, tell them to slow down): pure apart from the bucket table."""
        tokens, at, warned = self._buckets.get(user_id, (self._burst, now, False))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens >= 1:
            self._buckets[user_id] = (tokens - 1, now, False)
            return True, False
        self._buckets[user_id] = (tokens, now, True)
        return False, not warned

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        user = getattr(event, "from_user", None)
        if user is None:
            return await handler(event, data)
        ok, warn = self.allow(user.id, time.monotonic())
        if ok:
            return await handler(event, data)
        # Said only in private chats: in a group (the ops chat) a stranger hears nothing.
        if _private(event) and (warn or isinstance(event, CallbackQuery)):
            await event.answer(texts.SLOW_DOWN)  # type: ignore[attr-defined]
        return None


def _private(event: TelegramObject) -> bool:
    if isinstance(event, CallbackQuery):
        return event.message is not None and event.message.chat.type == "private"
    return isinstance(event, Message) and event.chat.type == "private"
