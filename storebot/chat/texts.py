"""Everything the management bot says, in one place (plain text, no markup)."""

from __future__ import annotations

from storebot import ops
from storebot.deploy import DeployResult
from storebot.ledger import Report, format_usd
from storebot.models import Bot
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


def token_revoked(bot_id: str, username: str | None, support: str) -> str:
    name = f"@{username}" if username else f"bot {bot_id}"
    return (
        f"Telegram no longer accepts the token of {name}: it was revoked or replaced in "
        f"@BotFather. I have paused your assistant {bot_id} so it does not spin.\n\n"
        f"Open @BotFather, choose {name}, 'API Token', and send me the current token "
        f"here: your assistant starts again at once. Questions: {support}"
    )


def token_replaced(bot_id: str, gateway_token: str, url: str) -> str:
    return (
        f"Thank you: bot {bot_id} runs again with its new Telegram token.\n\n"
        f"Gateway URL: {url}\nNew gateway token: {gateway_token}\n"
        "Store it now: it is shown only this once; the old one no longer works."
    )


# Ops chat ------------------------------------------------------------------------

OPS_HELP = (
    "Ops commands (this chat, admins only):\n"
    "/bots [status] - the bots, a page at a time\n"
    "/bot ID - one bot: status, owner, plan, balance, resources, events\n"
    "/find TEXT - bots by part of an @username, an id, or an owner's Telegram id\n"
    "/suspend ID [reason] - kill switch: stopped, LLM off, route gone, owner told\n"
    "/resume ID - start a suspended or failed bot again\n"
    "/destroy ID - remove a bot and its data (asks first)\n"
    "/credit ID AMOUNT [note] - add (or, negative, take) LLM credit in dollars\n"
    "/stats - bots, revenue, LLM spend, host load, repairs"
)
OPS_USAGE = {
    "bots": "Usage: /bots [status], e.g. /bots suspended",
    "bot": "Usage: /bot ID (see /bots)",
    "find": "Usage: /find TEXT, e.g. /find shop_bot, /find k3v9, /find 123456789",
    "suspend": "Usage: /suspend ID [reason], e.g. /suspend k3v9x2qa spam reports",
    "resume": "Usage: /resume ID",
    "destroy": "Usage: /destroy ID",
    "credit": "Usage: /credit ID AMOUNT [note], e.g. /credit k3v9x2qa 5 refund for the outage",
}


def ops_no_bot(bot_id: str) -> str:
    return f"No bot with id {bot_id[:40]!r}. /bots lists them."


def ops_page(page: ops.Page) -> str:
    which = str(page.status) if page.status else "all but destroyed"
    head = f"Bots ({which}): {page.total}, page {page.page + 1} of {page.pages}"
    if not page.bots:
        return f"{head}\n(none)"
    return "\n".join([head, *map(_bot_line, page.bots)])


def ops_found(text: str, found: list[ops.BotLine], limit: int) -> str:
    if not found:
        return f"No bot matches {text[:40]!r} (an id's start, part of an @username, an owner id)."
    more = f", the first {limit}" if len(found) >= limit else ""
    head = f"Bots matching {text[:40]!r}{more}:"
    return "\n".join([head, *map(_bot_line, found)])


def _bot_line(b: ops.BotLine) -> str:
    return (
        f"{b.id}  {b.status}  {'@' + b.username if b.username else '-'}  "
        f"owner {b.owner or '-'}  {format_usd(b.balance_micro)}"
    )


def ops_card(card: ops.Card) -> str:
    i, r = card.info, card.balance
    why = f" ({i['status_reason']})" if i.get("status_reason") else ""
    name = f" @{i['telegram_username']}" if i.get("telegram_username") else ""
    paid = f"paid until {card.paid_until:%Y-%m-%d}" if card.paid_until else "no paid period"
    lines = [
        f"Bot {i['id']}{name}: {i['status']}{why}",
        f"Owner: {i['owner_telegram_id'] or '-'}",
        f"Plan: {i['plan']}, {paid}",
        f"LLM balance: {format_usd(r.balance)} (spent today {format_usd(r.today)}, "
        f"7 days {format_usd(r.week)})",
        f"Container: {_container(card)}",
        "Last events:",
    ]
    lines += [
        f"  {e['at'][:16]} {e['from'] or '-'} -> {e['to']} by {e['actor']}: {e['reason']}"
        for e in i["events"][:5]
    ] or ["  (none)"]
    return "\n".join(lines)


def _container(card: ops.Card) -> str:
    state = card.info.get("container_state")
    if state is None:
        return "none"
    text = str(state["status"])
    if state["status"] != "running":
        oom = ", OOM-killed" if state.get("oom_killed") else ""
        return f"{text} (exit code {state.get('exit_code')}{oom})"
    u = card.usage
    if u is None:
        return text
    cpu = "?" if u.cpus is None else f"{u.cpus:.2f}"
    of_cpus = f" of {u.cpu_limit:g}" if u.cpu_limit else ""
    of_mem = f" of {_mib(u.mem_limit)}" if u.mem_limit else ""
    return f"{text}, CPU {cpu}{of_cpus}, memory {_mib(u.mem_bytes)}{of_mem}"


def _mib(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB" if n < 100 * 2**20 else f"{n / 2**20:.0f} MiB"


def ops_stats(st: ops.Stats) -> str:
    bots = ", ".join(f"{k} {v}" for k, v in sorted(st.bots.items())) or "none"
    load = " ".join(f"{x:.2f}" for x in st.load) if st.load else "unknown"
    mem = (
        f"{_mib(st.mem_available)} free of {_mib(st.mem_total)}"
        if st.mem_total is not None and st.mem_available is not None
        else "unknown"
    )
    running = "Docker did not answer" if st.containers is None else f"{st.containers}"
    return "\n".join(
        [
            f"Bots: {bots} (total {sum(st.bots.values())})",
            f"Top-ups: {format_usd(st.topups_today)} today, {format_usd(st.topups_30d)} in 30 days",
            f"Hosting: {st.paid_bots} paid bot(s), "
            f"{format_price(st.hosting_monthly_cents, st.currency)} a month",
            f"LLM spend: {format_usd(st.llm_today)} today, {format_usd(st.llm_7d)} in 7 days",
            f"Host: load {load}; memory {mem}; bot containers running: {running}",
            f"Repairs (reconciler): {st.repairs_today} today, {st.repairs_7d} in 7 days",
        ]
    )


def ops_confirm_destroy(bot: Bot) -> str:
    name = f" (@{bot.telegram_username})" if bot.telegram_username else ""
    return (
        f"Destroy bot {bot.id}{name}, {bot.status}? Its container and data are deleted and "
        "its subscription cancelled; this cannot be undone. The owner is told."
    )


def owner_suspended(bot_id: str, reason: str, support: str) -> str:
    why = f": {reason}" if reason and reason != ops.NO_REASON else ""
    return (
        f"Your assistant {bot_id} has been suspended by our team{why}.\n"
        "It is stopped and cannot use the LLM until this is resolved.\n"
        f"To know more or to ask us to restore it, write to {support}."
    )


def owner_resumed(bot_id: str) -> str:
    return f"Good news: your assistant {bot_id} is running again."


def owner_destroyed(bot_id: str, support: str) -> str:
    return (
        f"Your assistant {bot_id} has been removed by our team, with its data; its "
        f"hosting subscription ends with it. Questions: {support}"
    )


def suspended_for_abuse(bot_id: str, evidence: list[str], support: str) -> str:
    why = "\n".join(f"- {e}" for e in evidence)
    return (
        f"Your assistant {bot_id} was paused automatically: it behaved in a way that "
        f"looks like abuse or a fault.\n{why}\n\n"
        f"If you think this is a mistake, write to {support}: we look at it and "
        "restart it."
    )
