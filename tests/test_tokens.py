from __future__ import annotations

import hashlib

import pytest
from cryptography.fernet import Fernet

from storebot.errors import TokenFormatError
from storebot.tokens import (
    TokenBox,
    check_token_format,
    new_bot_id,
    new_gateway_token,
    redact,
    sha256_hex,
)

GOOD = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw-"


def test_token_format() -> None:
    assert check_token_format(GOOD) == 123456789
    assert check_token_format(f"  {GOOD}\n") == 123456789


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hello",
        "123456789",
        "123456789:short",
        f"{GOOD}x",
        "abc:" + "A" * 35,
        "123:" + "A" * 34 + "!",
        "/start",
    ],
)
def test_token_format_refuses(bad: str) -> None:
    with pytest.raises(TokenFormatError, match="@BotFather"):
        check_token_format(bad)


def test_hash_is_lowercase_sha256_like_nullclawd() -> None:
    assert sha256_hex("secret") == hashlib.sha256(b"secret").hexdigest()
    assert sha256_hex("secret") == sha256_hex("secret").lower()


def test_ids_are_dns_labels_and_unique() -> None:
    ids = {new_bot_id() for _ in range(2000)}
    assert len(ids) == 2000
    for i in ids:
        assert len(i) == 8 and i[0].isalpha() and i.isalnum() and i == i.lower()


def test_token_box_round_trip_and_wrong_key() -> None:
    box = TokenBox(Fernet.generate_key().decode())
    sealed = box.seal(GOOD)
    assert GOOD not in sealed
    assert box.open(sealed) == GOOD
    with pytest.raises(ValueError, match="STOREBOT_SECRET_KEY"):
        TokenBox(Fernet.generate_key().decode()).open(sealed)


def test_redact() -> None:
    gw = new_gateway_token()
    text = f"token {GOOD} used; Authorization: Bearer abc.def gw={gw} ok"
    out = redact(text)
    assert GOOD not in out and gw not in out and "abc.def" not in out
    assert out.count("<redacted>") == 3
    assert "ok" in out
