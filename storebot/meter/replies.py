"""The bodies the meter writes itself: the "top up" answer and OpenAI-style errors.

An empty balance is answered with HTTP 200 and a normal chat completion whose
assistant message says how to top up (an SSE stream when the bot asked for one):
nullclawd turns any 401/402/429 into a fixed generic text and corrupts the session
history on a failed turn (NULLCLAW.md), while a normal answer reaches the owner
unchanged, in one call.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any


def empty_balance_text(bot_id: str, shop: str | None) -> str:
    where = f"@{shop}" if shop else "the bot you bought me from"
    return (
        f"My LLM credit has run out, so I cannot answer right now. Top me up in {where} "
        f"with /topup (bot {bot_id}), then write again: I answer as soon as it is funded."
    )


def _base(model: str, kind: str) -> dict[str, Any]:
    return {
        "id": "gen-meter-" + secrets.token_hex(8),
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


def completion(model: str, text: str) -> bytes:
    body = _base(model, "chat.completion") | {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0},
    }
    return json.dumps(body).encode()


def completion_stream(model: str, text: str) -> bytes:
    """The same answer as server-sent events, ending with `data: [DONE]`."""
    base = _base(model, "chat.completion.chunk")
    chunks = [
        base
        | {
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": text},
                    "finish_reason": None,
                }
            ]
        },
        base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        base
        | {
            "choices": [],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0},
        },
    ]
    events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    return "".join(events).encode()


def error(message: str, kind: str, code: str) -> dict[str, Any]:
    """OpenAI's error shape, which OpenAI-compatible clients know how to show."""
    return {"error": {"message": message, "type": kind, "code": code}}
