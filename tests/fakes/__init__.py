"""HTTP fakes of the third-party services storebot talks to (see DESIGN.md)."""

from tests.fakes.telegram import Call, FakeBot, FakeTelegram, TelegramError, make_token

__all__ = ["Call", "FakeBot", "FakeTelegram", "TelegramError", "make_token"]
