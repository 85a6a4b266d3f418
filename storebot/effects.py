"""What someone must be told after a change is committed, for the chat layer to send.

Services return Effects instead of sending messages: they know no Telegram, and the
database alone is enough to pick up after a crash between the commit and the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Effect:
    # ask_token | renewed | payment_failed | subscription_ended | ops_alert | topped_up
    # | balance_alert | hosting_expired | resumed | deployed | deploy_failed | docker_down
    kind: str
    telegram_id: int | None = None
    bot_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
