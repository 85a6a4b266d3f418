"""The config.json each hosted nullclawd reads: pure, exactly per NULLCLAW.md."""

from __future__ import annotations

import json
from typing import Any

GATEWAY_PORT = 3000
CONFIG_MAX_BYTES = 64 * 1024  # nullclawd refuses a larger file


def render_config(
    *,
    bot_token: str,
    owner_telegram_id: int,
    llm_token: str,
    meter_url: str,
    model: str,
    gateway_token_hash: str,
) -> dict[str, Any]:
    if len(gateway_token_hash) != 64 or gateway_token_hash != gateway_token_hash.lower():
        # nullclawd compares against lowercase hex; anything else is re-hashed and never matches
        raise ValueError("gateway_token_hash must be 64 lowercase hex characters")
    return {
        "models": {"providers": {"meter": {"api_key": llm_token, "base_url": meter_url}}},
        # split at the FIRST '/': provider "meter", then the OpenRouter model name
        "agents": {"defaults": {"model": {"primary": f"meter/{model}"}}},
        "channels": {
            "cli": False,
            "telegram": {
                "accounts": {
                    # allow_from entries MUST be strings: a number silently drops the account
                    "main": {"bot_token": bot_token, "allow_from": [str(owner_telegram_id)]}
                }
            },
        },
        # a failed LLM call must not be retried 6 times against the meter
        "reliability": {"provider_retries": 0},
        "gateway": {
            "host": "::",
            "port": GATEWAY_PORT,
            "require_pairing": True,
            "allow_public_bind": True,
            "paired_tokens": [gateway_token_hash],
        },
    }


def dump_config(config: dict[str, Any]) -> bytes:
    data = (json.dumps(config, indent=2) + "\n").encode()
    if len(data) > CONFIG_MAX_BYTES:
        raise ValueError("config.json would exceed nullclawd's 64 KiB limit")
    return data
