"""The one adapter to OpenRouter's OpenAI-compatible chat completions.

It holds the server's key (bots never see it) and reports each call's cost in USD
from `usage.cost`, which OpenRouter adds to a non-streamed answer and to the last
chunk of a stream. Anything that is not a well-formed answer (an HTTP error, a
timeout, a body that is not JSON) is an `UpstreamFailed`: never charged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
import orjson

#: never reused for a call whose key we cannot see: the bearer is ours
HEADERS = {"Content-Type": "application/json", "X-Title": "storebot", "User-Agent": "storebot"}


class UpstreamFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status  # what the bot is answered: 502, 504, or upstream's 400


@dataclass(frozen=True)
class Answer:
    body: bytes
    cost: Decimal | None


def cost_of(payload: Any) -> Decimal | None:
    """`usage.cost` of an answer or a chunk, if it is a finite number >= 0."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    raw = usage.get("cost") if isinstance(usage, dict) else None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    try:
        value = Decimal(repr(raw))
    except InvalidOperation:
        return None
    return value if value.is_finite() and value >= 0 else None


class Upstream:
    def __init__(self, base_url: str, api_key: str, timeout: float) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = HEADERS | {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10))
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._http = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def _client(self) -> aiohttp.ClientSession:
        assert self._http is not None, "Upstream.start() first"
        return self._http

    async def complete(self, body: bytes) -> Answer:
        """One non-streamed call: the answer as upstream sent it, and its cost."""
        try:
            async with self._client.post(self._url, data=body) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise UpstreamFailed(504, "the LLM provider did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(502, f"the LLM provider is unreachable ({exc})") from None
        _check_status(status, raw)
        try:
            payload = orjson.loads(raw)
        except ValueError:
            raise UpstreamFailed(502, "the LLM provider sent an answer that is not JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise UpstreamFailed(502, "the LLM provider sent no choices")
        return Answer(raw, cost_of(payload))

    @asynccontextmanager
    async def stream(self, body: bytes) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streamed call, once upstream has said 200; its chunks are read by the caller
        (see `Costs`), who owns timeouts past this point through the session's total."""
        try:
            async with self._client.post(self._url, data=body) as resp:
                if resp.status != 200:
                    _check_status(resp.status, await resp.read())
                yield resp
        except TimeoutError:
            raise UpstreamFailed(504, "the LLM provider did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(502, f"the LLM provider is unreachable ({exc})") from None


def _check_status(status: int, raw: bytes) -> None:
    if status == 200:
        return
    if status == 400:  # the bot's request is at fault: it may learn from the message
        raise UpstreamFailed(400, _message(raw) or "the LLM provider refused the request")
    raise UpstreamFailed(502, f"the LLM provider failed (HTTP {status})")


def _message(raw: bytes) -> str | None:
    try:
        msg = orjson.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None
    return msg if isinstance(msg, str) else None


class Costs:
    """Finds `usage.cost` in a server-sent event stream, fed the raw bytes as they pass
    through (chunks may split lines anywhere)."""

    def __init__(self) -> None:
        self._tail = b""
        self.cost: Decimal | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            self._line(line.strip())

    def close(self) -> None:
        self._line(self._tail.strip())
        self._tail = b""

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return  # comments (": OPENROUTER PROCESSING"), event names, blanks
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
        elif b'"cost"' in data:  # only the usage chunk is parsed
            try:
                found = cost_of(orjson.loads(data))
            except ValueError:
                return
            if found is not None:
                self.cost = found


async def drain(resp: aiohttp.ClientResponse, costs: Costs) -> None:
    """Read what is left of a stream nobody listens to any more, to learn its cost."""
    with_timeout = asyncio.timeout(30)
    async with with_timeout:
        async for data in resp.content.iter_any():
            costs.feed(data)
    costs.close()
