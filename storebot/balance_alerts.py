"""Balance alerts: an owner hears once when their bot's LLM credit falls past each level
(BALANCE_ALERT_PERCENTS of the balance right after their last top-up) and once at
zero. A top-up re-arms them (`ledger.credit_topup`).

The rule (`alert_due`) is pure. `due_alerts` records each alert in the account
(compare-and-set, so two runs never both send it, and a top-up landing meanwhile
wins) before returning it as an Effect to send.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import col, select

from storebot.effects import Effect
from storebot.hosting import Hosting
from storebot.models import Bot, BotStatus, Customer, LlmAccount, utcnow

WATCHED = (BotStatus.running, BotStatus.suspended, BotStatus.failed, BotStatus.deploying)


def alert_due(balance: int, reference: int, percents: list[int], already: int | None) -> int | None:
    """The level to announce now: the lowest one the balance has fallen to or below,
    if no alert at or below it was sent since the last top-up. `percents` highest
    first, ending with 0 (an empty balance: balance <= 0)."""
    if reference <= 0:
        return None  # never topped up: nothing to measure against, nothing to warn about
    crossed = [p for p in percents if balance * 100 <= reference * p]
    if not crossed:
        return None
    level = min(crossed)
    if already is not None and already <= level:
        return None
    return level


def due_alerts(h: Hosting) -> list[Effect]:
    percents = h.settings.alert_percents()
    effects = []
    with h.session() as s:
        rows = s.exec(
            select(LlmAccount, Customer.telegram_id)
            .join(Bot, col(Bot.id) == col(LlmAccount.bot_id))
            .join(Customer, col(Customer.id) == col(Bot.customer_id))
            .where(col(LlmAccount.reference_micro) > 0, col(Bot.status).in_(WATCHED))
        ).all()
        for acc, owner in rows:
            level = alert_due(acc.balance_micro, acc.reference_micro, percents, acc.alerted_percent)
            if level is None:
                continue
            claimed = s.execute(
                update(LlmAccount)
                .where(
                    col(LlmAccount.bot_id) == acc.bot_id,
                    col(LlmAccount.reference_micro) == acc.reference_micro,
                    col(LlmAccount.alerted_percent).is_(None)
                    if acc.alerted_percent is None
                    else col(LlmAccount.alerted_percent) == acc.alerted_percent,
                )
                .values(alerted_percent=level, updated_at=utcnow())
            )
            s.commit()
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                detail = {"percent": level, "balance": acc.balance_micro}
                effects.append(Effect("balance_alert", owner, acc.bot_id, detail))
    return effects
