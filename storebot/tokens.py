"""Secrets we make, keep or must never show: pure helpers, no I/O.

- Gateway and LLM tokens come from `secrets`, are shown once, and are stored only as
  lowercase hex SHA-256 (exactly how nullclawd compares a presented bearer token).
- Customer Telegram tokens are kept encrypted (Fernet, key STOREBOT_SECRET_KEY).
- `redact` scrubs anything token-shaped from text we show (logs, errors).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from cryptography.fernet import Fernet, InvalidToken

from storebot.errors import TokenFormatError

TELEGRAM_TOKEN = re.compile(r"^(\d{1,20}):[A-Za-z0-9_-]{35}$")
_TOKENISH = re.compile(
    r"(?<!\d)\d{5,20}:[A-Za-z0-9_-]{35}"  # Telegram bot tokens
    r"|\b(?:sbgw|sbllm)_[A-Za-z0-9_-]{20,}"  # our gateway / LLM tokens
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"  # Authorization headers
)
_BOT_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def check_token_format(token: str) -> int:
    """The Telegram bot id inside a well-formed token, else TokenFormatError."""
    match = TELEGRAM_TOKEN.match(token.strip())
    if not match:
        raise TokenFormatError(
            "That is not a Telegram bot token. A token looks like "
            "123456789:AAH... (digits, a colon, then 35 letters, digits, '-' or '_'); "
            "copy it whole from @BotFather."
        )
    return int(match.group(1))


def sha256_hex(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_gateway_token() -> str:
    return "sbgw_" + secrets.token_urlsafe(32)


def new_llm_token() -> str:
    return "sbllm_" + secrets.token_urlsafe(32)


def new_bot_id() -> str:
    """8 characters, starts with a letter: a valid DNS label, hard to guess."""
    first = secrets.choice(_BOT_ID_ALPHABET[:26])
    return first + "".join(secrets.choice(_BOT_ID_ALPHABET) for _ in range(7))


class TokenBox:
    """Encrypts customer tokens at rest."""

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def seal(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise ValueError("cannot decrypt: STOREBOT_SECRET_KEY changed?") from None


def redact(text: str) -> str:
    return _TOKENISH.sub("<redacted>", text)
