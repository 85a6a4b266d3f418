"""A stateful fake of the Telegram Bot API that speaks the real HTTP wire protocol.

Point production code at ``FakeTelegram().base_url`` (our ``TELEGRAM_API_BASE``): it serves
``/bot<token>/<method>`` over GET and POST, reads parameters from the query string and from
urlencoded, multipart (what aiogram sends) or JSON bodies, and answers with Telegram's
envelope, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code", "description"}``.
The aiohttp server runs in its own thread and event loop, so the same fake serves sync tests
(e.g. the CLI in a subprocess) and async tests (an aiogram dispatcher in the test's loop).

Faked, per bot token: getMe; getUpdates with offset, limit and long-poll timeout (409 while a
webhook is set); setWebhook, deleteWebhook, getWebhookInfo; set/get/deleteMyCommands;
sendMessage, sendPhoto, sendDocument, editMessageText, editMessageReplyMarkup, deleteMessage,
answerCallbackQuery, sendChatAction. Per-chat message ids shared by bot and user, edit history,
deletions, HTML ``parse_mode`` (tags stripped, unknown or unbalanced tags rejected), text and
caption length limits, ``callback_data`` of at most 64 bytes, "message is not modified",
"message to edit/delete not found", 401 for unknown or revoked tokens, 404 for malformed paths
and unknown methods. Tests inject customer updates (``send_text``, ``send_photo``,
``send_sticker``, ``press_button``), read every call and per-chat transcripts, block until the
bot says something (``wait_for_message``) and inject faults (``fail_next``, ``delay``).

Not faked: webhook delivery (injected updates only queue for getUpdates); group and channel
semantics beyond a chat ``type``; Markdown/MarkdownV2 (text kept verbatim); ``entities`` of
formatted bot messages; reply keyboards in returned messages (the real API only returns inline
keyboards there; read them from ``calls_for``); file downloads (``/file/bot...``); inline mode,
payments, media groups and every other method (404). "Chat not found", "bot was blocked" or
flood limits are not simulated by default: use ``fail_next(..., status=403/400/429)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Self, TypeVar

from aiohttp import web

from tests.fakes._server import FakeServer

JSON = dict[str, Any]
T = TypeVar("T")

_TOKEN_RE = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
_PATH_RE = re.compile(r"^/bot([^/]*)/([^/]*)$")
_TOKEN_ALPHABET = string.ascii_letters + string.digits + "_-"
_COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_JSON_KEYS = frozenset(
    {"reply_markup", "entities", "caption_entities", "commands", "allowed_updates", "scope"}
    | {"link_preview_options", "reply_parameters", "media"}
)
_INT_KEYS = frozenset(
    {"chat_id", "message_id", "offset", "limit", "timeout", "user_id", "from_chat_id"}
    | {"reply_to_message_id", "message_thread_id", "cache_time", "max_connections"}
)
_BOOL_KEYS = frozenset(
    {"disable_notification", "protect_content", "show_alert", "drop_pending_updates"}
    | {"disable_web_page_preview", "allow_sending_without_reply", "has_spoiler"}
)
_HTML_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "span"}
    | {"tg-spoiler", "tg-emoji", "blockquote"}
)
_STATUS_TEXT = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
_STATUS_TEXT |= {409: "Conflict", 500: "Internal Server Error", 502: "Bad Gateway"}
_NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)
_QUERY_INVALID = "query is too old and response timeout expired or query ID is invalid"


def make_token(bot_id: int | None = None) -> str:
    """A well-formed bot token ``<id>:<35 chars>``; the fake knows it only after ``add_bot``."""
    bot_id = secrets.randbelow(9 * 10**9) + 10**9 if bot_id is None else bot_id
    return f"{bot_id}:" + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(35))


class TelegramError(Exception):
    """An API error, answered as ``{"ok": false, "error_code": ..., "description": ...}``."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.retry_after = status, description, retry_after

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _bad(reason: str) -> TelegramError:
    return TelegramError(400, f"Bad Request: {reason}")


@dataclass(frozen=True)
class Call:
    """One HTTP request to the fake; ``method`` is canonical (``sendMessage``) when known."""

    token: str
    method: str
    params: JSON
    at: float
    status: int = 200


@dataclass
class _Msg:
    data: JSON
    from_bot: bool
    deleted: bool = False
    history: list[str] = field(default_factory=list)


@dataclass
class _Chat:
    next_id: int = 1
    messages: dict[int, _Msg] = field(default_factory=dict)
    log: list[JSON] = field(default_factory=list)  # snapshots of each bot text sent or edited


@dataclass
class FakeBot:
    """A registered bot. Identity fields are public; the rest is state owned by the fake."""

    token: str
    id: int
    username: str
    first_name: str
    can_join_groups: bool = True
    can_read_all_group_messages: bool = False
    supports_inline_queries: bool = False
    revoked: bool = False
    _updates: list[JSON] = field(default_factory=list, init=False, repr=False)
    _next_update_id: int = field(default=100_000, init=False, repr=False)
    _chats: dict[int, _Chat] = field(default_factory=dict, init=False, repr=False)
    _users: dict[int, JSON] = field(default_factory=dict, init=False, repr=False)
    _commands: dict[str, list[JSON]] = field(default_factory=dict, init=False, repr=False)
    _webhook: JSON = field(default_factory=dict, init=False, repr=False)
    _callbacks: dict[str, JSON | None] = field(default_factory=dict, init=False, repr=False)
    _waiters: set[asyncio.Future[None]] = field(default_factory=set, init=False, repr=False)

    def user(self) -> JSON:
        return {
            "id": self.id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
        }

    def chat(self, chat_id: int) -> _Chat:
        return self._chats.setdefault(chat_id, _Chat())

    def chat_object(self, chat_id: int) -> JSON:
        if chat_id < 0:
            kind = "supergroup" if chat_id < -(10**12) else "group"
            return {"id": chat_id, "type": kind, "title": f"Chat {chat_id}"}
        user = self._users.get(chat_id, {})
        names: JSON = {k: user[k] for k in ("first_name", "username") if k in user}
        return {"id": chat_id, "type": "private", **names}


class _HTMLText(HTMLParser):
    """Telegram-style HTML: only the supported tags, balanced; collects the plain text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            raise _bad(f'can\'t parse entities: Unsupported start tag "{tag}"')
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            raise _bad(f'can\'t parse entities: Unexpected end tag "{tag}"')
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _plain(raw: Any, parse_mode: Any, limit: int, too_long: str) -> str:
    text = str(raw)
    if str(parse_mode or "").upper() == "HTML":
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        if parser.open:
            tag = parser.open[-1]
            raise _bad(f"can't parse entities: Can't find end tag corresponding to start tag {tag}")
        text = "".join(parser.parts)
    text = text.strip()
    if len(text.encode("utf-16-le")) // 2 > limit:
        raise _bad(too_long)
    return text


def _markup(raw: Any) -> JSON | None:
    """Validate a reply_markup; return it if it is an inline keyboard (what Message carries)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("inline_keyboard", []), list):
        raise _bad("can't parse reply keyboard markup JSON object")
    for row in raw.get("inline_keyboard", []):
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                raise _bad("BUTTON_DATA_INVALID")
    return raw if "inline_keyboard" in raw else None


def _coerce(key: str, value: Any) -> Any:
    """Form and query values are strings; decode the ones Telegram types."""
    if not isinstance(value, str):
        return value
    if key in _JSON_KEYS and value.startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if key in _INT_KEYS and re.fullmatch(r"-?\d+", value):
        return int(value)
    if key in _BOOL_KEYS and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _need(p: JSON, key: str, reason: str | None = None) -> Any:
    value = p.get(key)
    if value is None or value == "":
        raise _bad(reason or f'parameter "{key}" is required')
    return value


def _chat_id(p: JSON) -> int:
    value = _need(p, "chat_id", "chat_id is empty")
    if not isinstance(value, int):
        raise _bad("chat not found")
    return value


def _file_id(prefix: str) -> tuple[str, str]:
    return prefix + secrets.token_urlsafe(30), "AQAD" + secrets.token_urlsafe(9)


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def _body(message: JSON) -> str:
    return str(message.get("text") or message.get("caption") or "")


class FakeTelegram(FakeServer):
    """The fake API server. Every public method is thread-safe."""

    _client_max_size = 64 * 2**20  # uploads (sendPhoto, sendDocument)

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._cond = threading.Condition(threading.RLock())
        self._bots: dict[str, FakeBot] = {}
        self._calls: list[Call] = []
        self._faults: dict[str, list[TelegramError]] = {}
        self._delays: dict[str, float] = {}
        self._closing = False
        self._methods: dict[str, Callable[[FakeBot, JSON], Any]] = {
            "getMe": self._get_me,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._webhook_info,
            "setMyCommands": self._set_commands,
            "getMyCommands": self._get_commands,
            "deleteMyCommands": self._delete_commands,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "editMessageText": self._edit_text,
            "editMessageReplyMarkup": self._edit_markup,
            "deleteMessage": self._delete_message,
            "answerCallbackQuery": self._answer_query,
            "sendChatAction": self._chat_action,
            "getUpdates": self._get_updates_now,
        }
        self._canonical = {name.lower(): name for name in self._methods}

    # -- lifecycle (the rest: FakeServer) --------------------------------------------------
    def start(self) -> Self:
        """Start serving on a free port of ``host`` in a background thread."""
        self._closing = False
        return super().start()

    def stop(self) -> None:
        """Answer pending long polls, stop the server and join its thread."""
        loop = self._loop
        with self._cond:
            self._closing = True
            waiters = [w for bot in self._bots.values() for w in bot._waiters]
        if loop is not None:
            loop.call_soon_threadsafe(_wake, waiters)
        super().stop()

    # -- bots -------------------------------------------------------------------------------
    def add_bot(
        self,
        token: str | None = None,
        username: str | None = None,
        *,
        first_name: str | None = None,
        can_join_groups: bool = True,
        can_read_all_group_messages: bool = False,
        supports_inline_queries: bool = False,
    ) -> FakeBot:
        """Register a valid token (a fresh one when None); the bot id is its digits."""
        token = token or make_token()
        if not _TOKEN_RE.match(token):
            raise ValueError(f"malformed bot token {token!r}")
        bot_id = int(token.split(":")[0])
        username = username or f"test{bot_id}_bot"
        bot = FakeBot(
            token,
            bot_id,
            username,
            first_name or username.removesuffix("_bot"),
            can_join_groups,
            can_read_all_group_messages,
            supports_inline_queries,
        )
        with self._cond:
            self._bots[token] = bot
        return bot

    def revoke(self, token: str) -> None:
        """Make the token answer 401 from now on (like /revoke in BotFather)."""
        with self._cond:
            self._bot(token).revoked = True

    def _bot(self, token: str) -> FakeBot:
        try:
            return self._bots[token]
        except KeyError:
            raise KeyError(f"unknown bot token {token[:12]}...; call add_bot first") from None

    # -- HTTP -------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        at = time.time()
        match = _PATH_RE.match(request.path)
        token = match[1] if match else ""
        params = await self._read_params(request)
        method = self._canonical.get(match[2].lower(), match[2]) if match else request.path
        try:
            if not match or not _TOKEN_RE.match(token):
                raise TelegramError(404, "Not Found")
            with self._cond:
                delay = self._delays.get(method.lower(), 0.0)
                faults = self._faults.get(method.lower()) or self._faults.get("*")
                fault = faults.pop(0) if faults else None
            if delay:
                await asyncio.sleep(delay)
            if fault:
                raise fault
            with self._cond:
                bot = self._bots.get(token)
                if bot is None or bot.revoked:
                    raise TelegramError(401, "Unauthorized")
                if method not in self._methods:
                    raise TelegramError(404, "Not Found")
            if method == "getUpdates":
                result = await self._get_updates(bot, params)
            else:
                with self._cond:
                    result = self._methods[method](bot, params)
            status, body = 200, {"ok": True, "result": result}
        except TelegramError as exc:
            status, body = exc.status, exc.body()
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            status, body = 400, _bad(f"invalid parameters ({exc})").body()
        with self._cond:
            self._calls.append(Call(token, method, copy.deepcopy(params), at, status))
            self._cond.notify_all()
        return web.json_response(body, status=status)

    @staticmethod
    async def _read_params(request: web.Request) -> JSON:
        params: JSON = dict(request.query)
        if request.content_type == "application/json" and request.can_read_body:
            with contextlib.suppress(ValueError):
                body = await request.json()
                params.update(body if isinstance(body, dict) else {})
        elif request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            for key, value in (await request.post()).items():
                params[key] = value
                if isinstance(value, web.FileField):  # keep a description, not the bytes
                    size = len(value.file.read())
                    value.file.close()
                    params[key] = {
                        "filename": value.filename,
                        "size": size,
                        "content_type": value.content_type,
                    }
        return {key: _coerce(key, value) for key, value in params.items()}

    # -- methods (called with the lock held, except _get_updates) -----------------------------
    def _get_me(self, bot: FakeBot, p: JSON) -> JSON:
        return bot.user() | {
            "can_join_groups": bot.can_join_groups,
            "can_read_all_group_messages": bot.can_read_all_group_messages,
            "supports_inline_queries": bot.supports_inline_queries,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, bot: FakeBot, p: JSON) -> list[JSON]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, float(p.get("timeout") or 0))
        while True:
            with self._cond:
                updates = self._get_updates_now(bot, p)
                if updates or self._closing or loop.time() >= deadline:
                    return updates
                waiter: asyncio.Future[None] = loop.create_future()
                bot._waiters.add(waiter)
            try:
                await asyncio.wait({waiter}, timeout=deadline - loop.time())
            finally:
                with self._cond:
                    bot._waiters.discard(waiter)

    def _get_updates_now(self, bot: FakeBot, p: JSON) -> list[JSON]:
        if bot._webhook.get("url"):
            raise TelegramError(
                409,
                "Conflict: can't use getUpdates method while webhook is "
                "active; use deleteWebhook to delete the webhook first",
            )
        offset, limit = int(p.get("offset") or 0), min(max(int(p.get("limit") or 100), 1), 100)
        if offset > 0:
            bot._updates = [u for u in bot._updates if u["update_id"] >= offset]
        elif offset < 0:
            bot._updates = bot._updates[offset:]
        return copy.deepcopy(bot._updates[:limit])

    def _set_webhook(self, bot: FakeBot, p: JSON) -> bool:
        url = str(p.get("url") or "")
        if url and not url.startswith("https://"):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        if p.get("drop_pending_updates"):
            bot._updates.clear()
        keys = ("secret_token", "allowed_updates", "max_connections")
        bot._webhook = {"url": url, **{k: p[k] for k in keys if k in p}} if url else {}
        return True

    def _delete_webhook(self, bot: FakeBot, p: JSON) -> bool:
        return self._set_webhook(bot, {"drop_pending_updates": p.get("drop_pending_updates")})

    def _webhook_info(self, bot: FakeBot, p: JSON) -> JSON:
        info = {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
        hook = {k: v for k, v in bot._webhook.items() if k != "secret_token"}
        return info | hook | {"pending_update_count": len(bot._updates)}

    @staticmethod
    def _commands_key(p: JSON) -> str:
        scope = p.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True) + "|" + str(p.get("language_code") or "")

    def _set_commands(self, bot: FakeBot, p: JSON) -> bool:
        commands = _need(p, "commands")
        if not isinstance(commands, list):
            raise _bad("can't parse commands JSON object")
        for command in commands:
            if not _COMMAND_RE.match(str(command.get("command", ""))):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", "")).strip()) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
        cleaned = [{"command": c["command"], "description": c["description"]} for c in commands]
        bot._commands[self._commands_key(p)] = cleaned
        return True

    def _get_commands(self, bot: FakeBot, p: JSON) -> list[JSON]:
        return copy.deepcopy(bot._commands.get(self._commands_key(p), []))

    def _delete_commands(self, bot: FakeBot, p: JSON) -> bool:
        bot._commands.pop(self._commands_key(p), None)
        return True

    def _post(self, bot: FakeBot, chat_id: int, p: JSON, content: JSON) -> JSON:
        chat = bot.chat(chat_id)
        msg: JSON = {
            "message_id": chat.next_id,
            "from": bot.user(),
            "chat": bot.chat_object(chat_id),
            "date": int(time.time()),
            **content,
        }
        if markup := _markup(p.get("reply_markup")):
            msg["reply_markup"] = markup
        chat.next_id += 1
        chat.messages[msg["message_id"]] = _Msg(msg, from_bot=True, history=[_body(msg)])
        if _body(msg):
            chat.log.append(copy.deepcopy(msg))
        return copy.deepcopy(msg)

    def _send_message(self, bot: FakeBot, p: JSON) -> JSON:
        chat_id = _chat_id(p)
        text = _plain(
            _need(p, "text", "message text is empty"),
            p.get("parse_mode"),
            4096,
            "message is too long",
        )
        if not text:
            raise _bad("message text is empty")
        return self._post(bot, chat_id, p, {"text": text})

    def _caption(self, p: JSON) -> JSON:
        if not p.get("caption"):
            return {}
        caption = _plain(p["caption"], p.get("parse_mode"), 1024, "message caption is too long")
        return {"caption": caption} if caption else {}

    def _upload(self, p: JSON, key: str) -> tuple[Any, str | None]:
        value = _need(p, key, f"there is no {key} in the request")
        if isinstance(value, str) and value.startswith("attach://"):
            value = _need(p, value.removeprefix("attach://"), f"there is no {key} in the request")
        name = value.get("filename") if isinstance(value, dict) else None
        return value, name

    def _send_photo(self, bot: FakeBot, p: JSON) -> JSON:
        chat_id = _chat_id(p)
        value, _ = self._upload(p, "photo")
        file_id, unique = _file_id("AgAC") if not isinstance(value, str) else (value, "AQADph")
        sizes = [
            {"file_id": file_id, "file_unique_id": unique, "width": w, "height": w}
            for w in (90, 320, 800)
        ]
        return self._post(bot, chat_id, p, {"photo": sizes, **self._caption(p)})

    def _send_document(self, bot: FakeBot, p: JSON) -> JSON:
        chat_id = _chat_id(p)
        value, name = self._upload(p, "document")
        file_id, unique = _file_id("BQAC") if not isinstance(value, str) else (value, "AQADdc")
        doc = {"file_id": file_id, "file_unique_id": unique, "file_name": name or "document"}
        return self._post(bot, chat_id, p, {"document": doc, **self._caption(p)})

    def _editable(self, bot: FakeBot, p: JSON, verb: str = "edit") -> tuple[_Chat, _Msg]:
        chat = bot.chat(_chat_id(p))
        message_id = _need(p, "message_id", "message identifier is not specified")
        msg = chat.messages.get(message_id) if isinstance(message_id, int) else None
        if msg is None or msg.deleted:
            raise _bad(f"message to {verb} not found")
        if verb == "edit" and not msg.from_bot:
            raise _bad("message can't be edited")
        return chat, msg

    def _edit_text(self, bot: FakeBot, p: JSON) -> JSON | bool:
        if p.get("inline_message_id"):
            return True
        chat, msg = self._editable(bot, p)
        text = _plain(
            _need(p, "text", "message text is empty"),
            p.get("parse_mode"),
            4096,
            "message is too long",
        )
        markup = _markup(p.get("reply_markup"))
        if "text" not in msg.data:
            raise _bad("there is no text in the message to edit")
        if not text:
            raise _bad("message text is empty")
        if msg.data["text"] == text and msg.data.get("reply_markup") == markup:
            raise _bad(_NOT_MODIFIED)
        msg.data.update(text=text, edit_date=int(time.time()))
        msg.data.pop("reply_markup", None)
        msg.data.update({"reply_markup": markup} if markup else {})
        msg.history.append(text)
        chat.log.append(copy.deepcopy(msg.data))
        return copy.deepcopy(msg.data)

    def _edit_markup(self, bot: FakeBot, p: JSON) -> JSON | bool:
        if p.get("inline_message_id"):
            return True
        _, msg = self._editable(bot, p)
        markup = _markup(p.get("reply_markup"))
        if msg.data.get("reply_markup") == markup:
            raise _bad(_NOT_MODIFIED)
        msg.data.pop("reply_markup", None)
        msg.data.update({"reply_markup": markup} if markup else {}, edit_date=int(time.time()))
        return copy.deepcopy(msg.data)

    def _delete_message(self, bot: FakeBot, p: JSON) -> bool:
        self._editable(bot, p, "delete")[1].deleted = True
        return True

    def _answer_query(self, bot: FakeBot, p: JSON) -> bool:
        query_id = str(_need(p, "callback_query_id", _QUERY_INVALID))
        if query_id not in bot._callbacks or bot._callbacks[query_id] is not None:
            raise _bad(_QUERY_INVALID)
        bot._callbacks[query_id] = dict(p)
        return True

    def _chat_action(self, bot: FakeBot, p: JSON) -> bool:
        _chat_id(p)
        _need(p, "action")
        return True

    # -- customer side: inject updates --------------------------------------------------------
    def _inject(
        self, token: str, user_id: int, username: str | None, first_name: str, content: JSON
    ) -> JSON:
        with self._cond:
            bot = self._bot(token)
            user = {
                "id": user_id,
                "is_bot": False,
                "first_name": first_name,
                "language_code": "en",
            } | ({"username": username} if username else {})
            bot._users[user_id] = user
            chat = bot.chat(user_id)
            msg: JSON = {
                "message_id": chat.next_id,
                "from": user,
                "chat": bot.chat_object(user_id),
                "date": int(time.time()),
                **content,
            }
            chat.next_id += 1
            chat.messages[msg["message_id"]] = _Msg(msg, from_bot=False)
            self._push(bot, {"message": msg})
            return copy.deepcopy(msg)

    def _push(self, bot: FakeBot, update: JSON) -> None:
        bot._updates.append(copy.deepcopy({"update_id": bot._next_update_id, **update}))
        bot._next_update_id += 1
        waiters, loop = list(bot._waiters), self._loop
        if waiters and loop is not None:
            loop.call_soon_threadsafe(_wake, waiters)
        self._cond.notify_all()

    def send_text(
        self,
        token: str,
        user_id: int,
        text: str,
        *,
        username: str | None = None,
        first_name: str = "Alice",
        reply_to: int | None = None,
    ) -> JSON:
        """The customer writes ``text`` to the bot in their private chat; returns the Message.
        ``reply_to``: the id of a message in that chat this one answers (e.g. a ForceReply
        question); it is sent along as ``reply_to_message``, as Telegram does."""
        content: JSON = {"text": text}
        if reply_to is not None:
            with self._cond:
                replied = self._bot(token).chat(user_id).messages.get(reply_to)
                if replied is None:
                    raise ValueError(f"no message {reply_to} in the chat with {user_id}")
                content["reply_to_message"] = copy.deepcopy(replied.data)
        if text.startswith("/"):
            length = len(text.split()[0].encode("utf-16-le")) // 2
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        return self._inject(token, user_id, username, first_name, content)

    def send_photo(
        self,
        token: str,
        user_id: int,
        *,
        caption: str | None = None,
        username: str | None = None,
        first_name: str = "Alice",
    ) -> JSON:
        """The customer sends a photo (with an optional caption)."""
        file_id, unique = _file_id("AgAC")
        sizes = [{"file_id": file_id, "file_unique_id": unique, "width": 800, "height": 600}]
        content = {"photo": sizes} | ({"caption": caption} if caption else {})
        return self._inject(token, user_id, username, first_name, content)

    def send_sticker(
        self,
        token: str,
        user_id: int,
        *,
        emoji: str = "👍",
        username: str | None = None,
        first_name: str = "Alice",
    ) -> JSON:
        """The customer sends a (static) sticker."""
        file_id, unique = _file_id("CAAC")
        sticker = {
            "file_id": file_id,
            "file_unique_id": unique,
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": emoji,
        }
        return self._inject(token, user_id, username, first_name, {"sticker": sticker})

    def press_button(
        self,
        token: str,
        user_id: int,
        message_id: int,
        callback_data: str,
        *,
        strict: bool = True,
        username: str | None = None,
        first_name: str = "Alice",
    ) -> str:
        """The customer presses an inline button; returns the callback query id.

        With ``strict`` the message must be a live bot message showing that button.
        """
        with self._cond:
            bot = self._bot(token)
            msg = bot.chat(user_id).messages.get(message_id)
            live = msg is not None and not msg.deleted and msg.from_bot
            if strict:
                rows = msg.data.get("reply_markup", {}).get("inline_keyboard", []) if msg else []
                buttons = [b.get("callback_data") for row in rows for b in row]
                if not live or callback_data not in buttons:
                    raise ValueError(
                        f"no live button {callback_data!r} on message {message_id} "
                        f"in chat {user_id}; buttons there: {buttons}"
                    )
            user = bot._users.get(user_id) or {
                "id": user_id,
                "is_bot": False,
                "first_name": first_name,
            }
            if username:
                user = user | {"username": username}
            bot._users[user_id] = user
            query_id = str(secrets.randbits(62))
            bot._callbacks[query_id] = None
            message = (
                copy.deepcopy(msg.data)
                if live and msg
                else {"chat": bot.chat_object(user_id), "message_id": message_id, "date": 0}
            )
            self._push(
                bot,
                {
                    "callback_query": {
                        "id": query_id,
                        "from": user,
                        "message": message,
                        "data": callback_data,
                        "chat_instance": str((bot.id << 20) ^ user_id),
                    }
                },
            )
            return query_id

    # -- inspection -----------------------------------------------------------------------------
    @property
    def calls(self) -> list[Call]:
        """Every request so far, in order of completion."""
        with self._cond:
            return list(self._calls)

    def calls_for(self, method: str, token: str | None = None) -> list[Call]:
        """Calls of ``method`` (case-insensitive), optionally of one token only."""
        with self._cond:
            return [
                c
                for c in self._calls
                if c.method.lower() == method.lower() and (token is None or c.token == token)
            ]

    def chat_messages(self, token: str, chat_id: int, *, include_user: bool = False) -> list[JSON]:
        """Messages currently shown in the chat (latest text and inline keyboard, not deleted)."""
        with self._cond:
            chat = self._bot(token)._chats.get(chat_id, _Chat())
            return [
                copy.deepcopy(m.data)
                for m in chat.messages.values()
                if not m.deleted and (m.from_bot or include_user)
            ]

    def sent(self, token: str, chat_id: int) -> list[str]:
        """Every text (or caption) the bot sent or edited into the chat, in order."""
        with self._cond:
            return [_body(m) for m in self._bot(token)._chats.get(chat_id, _Chat()).log]

    def message(self, token: str, chat_id: int, message_id: int) -> JSON | None:
        """The current state of one message (also when deleted), or None."""
        with self._cond:
            msg = self._bot(token)._chats.get(chat_id, _Chat()).messages.get(message_id)
            return copy.deepcopy(msg.data) if msg else None

    def history(self, token: str, chat_id: int, message_id: int) -> list[str]:
        """Every text a bot message had, first to latest (sent, then each edit)."""
        with self._cond:
            msg = self._bot(token)._chats.get(chat_id, _Chat()).messages.get(message_id)
            return list(msg.history) if msg else []

    def is_deleted(self, token: str, chat_id: int, message_id: int) -> bool:
        """Whether the message (the customer's or the bot's) was deleted by deleteMessage."""
        with self._cond:
            msg = self._bot(token)._chats.get(chat_id, _Chat()).messages.get(message_id)
            return bool(msg and msg.deleted)

    def commands(
        self, token: str, scope: JSON | None = None, language_code: str = ""
    ) -> list[JSON]:
        """The command list stored by setMyCommands for that scope and language."""
        with self._cond:
            p = {"scope": scope, "language_code": language_code}
            return copy.deepcopy(self._bot(token)._commands.get(self._commands_key(p), []))

    def pending_updates(self, token: str) -> list[JSON]:
        """Injected updates the bot has not confirmed (by a getUpdates offset) yet."""
        with self._cond:
            return copy.deepcopy(self._bot(token)._updates)

    def callback_answer(self, query_id: str) -> JSON | None:
        """The answerCallbackQuery params for a query id, or None while unanswered."""
        with self._cond:
            for bot in self._bots.values():
                if bot._callbacks.get(query_id) is not None:
                    return copy.deepcopy(bot._callbacks[query_id])
            return None

    # -- waiting ----------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 10.0) -> T:
        """Block until ``predicate()`` (run with the fake's lock held) is truthy; return it."""
        with self._cond:
            result = self._cond.wait_for(predicate, timeout)
        if not result:
            raise TimeoutError(f"condition not met within {timeout}s")
        return result

    def wait_for_message(
        self, token: str, chat_id: int, contains: str, *, since: int = 0, timeout: float = 10.0
    ) -> JSON:
        """Block until the bot sent or edited a text containing ``contains`` into the chat.

        Only transcript entries from index ``since`` on count (pass ``len(tg.sent(...))``
        taken before acting to ignore older output). Returns the message as of that event.
        """

        def find() -> JSON | None:
            log = self._bot(token)._chats.get(chat_id, _Chat()).log
            return next((copy.deepcopy(m) for m in log[since:] if contains in _body(m)), None)

        try:
            return self.wait_for(find, timeout)
        except TimeoutError:
            said = self.sent(token, chat_id)[since:]
            raise TimeoutError(
                f"bot did not say {contains!r} in chat {chat_id} within "
                f"{timeout}s; it said: {said!r}"
            ) from None

    def await_for(
        self, predicate: Callable[[], T], timeout: float = 10.0
    ) -> Coroutine[Any, Any, T]:
        """Async ``wait_for``: ``await tg.await_for(...)`` (the wait runs in a worker thread)."""
        return asyncio.to_thread(self.wait_for, predicate, timeout)

    def await_message(
        self, token: str, chat_id: int, contains: str, *, since: int = 0, timeout: float = 10.0
    ) -> Coroutine[Any, Any, JSON]:
        """Async ``wait_for_message``: ``await tg.await_message(...)``."""
        return asyncio.to_thread(
            self.wait_for_message, token, chat_id, contains, since=since, timeout=timeout
        )

    # -- faults -------------------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        status: int = 500,
        times: int = 1,
        *,
        description: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (``"*"``: any) with an error."""
        if status == 429:
            retry_after = retry_after or 1
            description = description or f"Too Many Requests: retry after {retry_after}"
        error = TelegramError(status, description or _STATUS_TEXT.get(status, "Error"), retry_after)
        with self._cond:
            self._faults.setdefault(method.lower(), []).extend([error] * times)

    def delay(self, method: str, seconds: float) -> None:
        """Hold every later call of ``method`` for ``seconds`` before answering (0 to clear)."""
        with self._cond:
            self._delays[method.lower()] = seconds

    # -- group chats (e.g. an operators' chat) ------------------------------------------------
    def send_group_text(
        self,
        token: str,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        username: str | None = None,
        first_name: str = "Admin",
    ) -> JSON:
        """User ``user_id`` writes ``text`` in the group ``chat_id`` (negative); returns the
        Message. Like ``send_text``, a leading ``/word`` is marked as a bot command."""
        if chat_id >= 0:
            raise ValueError(f"group chat ids are negative, not {chat_id}")
        content: JSON = {"text": text}
        if text.startswith("/"):
            length = len(text.split()[0].encode("utf-16-le")) // 2
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        with self._cond:
            bot = self._bot(token)
            user = {"id": user_id, "is_bot": False, "first_name": first_name}
            user |= {"language_code": "en"} | ({"username": username} if username else {})
            bot._users[user_id] = user
            chat = bot.chat(chat_id)
            msg: JSON = {
                "message_id": chat.next_id,
                "from": user,
                "chat": bot.chat_object(chat_id),
                "date": int(time.time()),
                **content,
            }
            chat.next_id += 1
            chat.messages[msg["message_id"]] = _Msg(msg, from_bot=False)
            self._push(bot, {"message": msg})
            return copy.deepcopy(msg)

    def press_group_button(
        self,
        token: str,
        chat_id: int,
        user_id: int,
        message_id: int,
        callback_data: str,
        *,
        username: str | None = None,
        first_name: str = "Admin",
    ) -> str:
        """User ``user_id`` presses an inline button of a live bot message in the group
        ``chat_id``; returns the callback query id. The button need not be shown there
        (a forged press), but the message must exist."""
        with self._cond:
            bot = self._bot(token)
            msg = bot.chat(chat_id).messages.get(message_id)
            if msg is None or msg.deleted or not msg.from_bot:
                raise ValueError(f"no live bot message {message_id} in chat {chat_id}")
            user = {"id": user_id, "is_bot": False, "first_name": first_name}
            user |= {"username": username} if username else {}
            query_id = str(secrets.randbits(62))
            bot._callbacks[query_id] = None
            self._push(
                bot,
                {
                    "callback_query": {
                        "id": query_id,
                        "from": user,
                        "message": copy.deepcopy(msg.data),
                        "data": callback_data,
                        "chat_instance": str((bot.id << 20) ^ (chat_id & 0xFFFFFFFF)),
                    }
                },
            )
            return query_id
