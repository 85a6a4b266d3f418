"""Everything the management bot says, in one place (plain text, no markup)."""

from __future__ import annotations

from storebot.deploy import DeployResult
from storebot.ledger import Report, format_usd
from storebot.plans import Plan, format_price
from storebot.settings import Settings

DEFAULT_TERMS = (
    "Terms of service\n\n"
    "- We may suspend or delete a bot suspected of abuse.\n"
    "- A bot's data may be removed when it is destroyed or its hosting ends.\n"
    "- LLM usage is prepaid and pauses when the balance reaches zero.\n"
    "- Hosting renews monthly until you cancel."
)


def terms(settings: Settings) -> str:
    """The operator's terms (TERMS_FILE) or the default ones."""
    if settings.TERMS_FILE is None:
        return DEFAULT_TERMS
    return settings.TERMS_FILE.read_text(encoding="utf-8").strip()[:4000]


def welcome(cheapest: Plan, currency: str) -> str:
    return (
        "Welcome! I create and run your own AI assistant on Telegram.\n\n"
        f"Hosting starts at {format_price(cheapest.price_cents, currency)} a month; "
        "LLM usage is prepaid separately.\n\n"
        "Tap 'Create my assistant' to start."
    )


HELP = (
    "How it works:\n"
    "1. /newbot: choose a plan and pay.\n"
    "2. Create a bot with @BotFather and send me its token.\n"
    "3. I start your assistant; only you can talk to it.\n\n"
    "/mybots shows your bots, /topup adds LLM credit, /balance shows it. "
    "/cancel stops what you are doing."
)

CHOOSE_PLAN = "Choose a plan:"
PAY = (
    "Almost there. Pay with the button below; I will ask for your bot's token as soon "
    "as the payment arrives."
)
PAY_FIRST = "Your order is not paid yet. Use the payment button above, then send the token."
CANCELLED = "Cancelled. Nothing was charged. Send /newbot to start again."
NOTHING_TO_CANCEL = "There is nothing to cancel."
PAID_CANNOT_CANCEL = (
    "Your order is paid and waits for a token, so I keep it. Send the token whenever you "
    "are ready; to stop the subscription, contact support."
)
SLOW_DOWN = "Slow down a little, please: I will answer in a moment."
NOT_A_TOKEN = (
    "I was expecting your bot's token, as text. It looks like 123456789:AAH... "
    "Get it from @BotFather (/newbot there, or /token for an existing bot)."
)


def ask_token(support: str) -> str:
    return (
        "Payment received, thank you!\n\n"
        "Now create your Telegram bot:\n"
        "1. Open @BotFather and send /newbot.\n"
        "2. Choose a name and a username ending in 'bot'.\n"
        "3. BotFather answers with a token like 123456789:AAH...; send it to me here.\n\n"
        f"Questions: {support}"
    )


def progress(step: str) -> str:
    return f"Setting up your assistant...\n- {step}"


def ready(result: DeployResult, support: str) -> str:
    return (
        f"Your assistant is live: t.me/{result.telegram_username}\n\n"
        f"Gateway URL: {result.url}\n"
        f"Gateway token: {result.gateway_token}\n"
        "Store this token now: it is shown only this once.\n\n"
        "Next: open your bot and send /start. Only you can talk to it.\n"
        "It answers once it has LLM credit: add some with /topup, see it with /balance.\n"
        f"Support: {support}"
    )


QUEUED = (
    "Our servers are busy right now, so I could not start your assistant yet. I keep "
    "your token and retry by myself; you get a message as soon as it is live."
)


def deploy_failed(reason: str, support: str) -> str:
    return (
        f"I could not start your assistant: {reason}\n\n"
        f"Your order stays paid: send the token again to retry, or write to {support}."
    )


# LLM credit ----------------------------------------------------------------------

NO_FUNDABLE_BOT = "You have no assistant to top up yet. Send /newbot to create one."
CHOOSE_TOPUP_BOT = "Which assistant gets the credit?"
ASK_AMOUNT_PREFIX = "How many dollars of LLM credit for bot "


def choose_amount(bot_id: str, balance: int) -> str:
    return f"LLM credit for bot {bot_id} (balance now {format_usd(balance)}). How much?"


def ask_amount(bot_id: str, low: object, high: object) -> str:
    return (
        f"{ASK_AMOUNT_PREFIX}{bot_id}? Between ${low} and ${high}. "
        "Reply to this message with the amount, like 20 or 12.50."
    )


def pay_topup(bot_id: str, micro: int) -> str:
    return (
        f"{format_usd(micro)} of LLM credit for bot {bot_id}. Pay with the button below; "
        "the credit is there a few seconds after the payment."
    )


def topped_up(bot_id: str, amount: int, balance: int) -> str:
    return (
        f"Thank you! {format_usd(amount)} of LLM credit added to bot {bot_id}. "
        f"Balance: {format_usd(balance)}."
    )


def balance_alert(bot_id: str, percent: int, balance: int) -> str:
    if percent == 0:
        return (
            f"Bot {bot_id} has used up its LLM credit (balance {format_usd(balance)}): it "
            "answers with a top-up reminder until you add credit."
        )
    return (
        f"Bot {bot_id} has {format_usd(balance)} of LLM credit left, {percent}% or less of "
        "your last top-up."
    )


def balance_report(bot_id: str, username: str | None, r: Report) -> str:
    name = f" (@{username})" if username else ""
    days = r.days_left()
    forecast = (
        f"At the last 7 days' rate that lasts about {days:.0f} more day(s)."
        if days is not None and days >= 1
        else "At the last 7 days' rate that lasts less than a day."
        if days is not None
        else "No usage in the last 7 days."
    )
    return (
        f"Bot {bot_id}{name}\n"
        f"Balance: {format_usd(r.balance)}\n"
        f"Spent today: {format_usd(r.today)}; last 7 days: {format_usd(r.week)}\n"
        f"{forecast}"
    )
