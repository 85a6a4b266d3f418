"""A stateful fake of OpenRouter's chat completions API that speaks its HTTP wire protocol.

Point an OpenAI-style client (or our metering proxy) at ``FakeOpenRouter().base_url``, which
looks like ``http://127.0.0.1:PORT/api/v1``. The aiohttp server runs in its own thread and event
loop (``with FakeOpenRouter() as fake``), or in its own process for benchmarks::

    python -m tests.fakes.openrouter --port 8091 --api-key sk-or-v1-x [--cost 0.0012]
        [--latency-ms 20] [--reply TEXT] [--host 127.0.0.1]

which prints ``listening on http://HOST:PORT/api/v1`` once it accepts connections and serves
until SIGTERM or SIGINT; ``GET /__fake/stats`` then answers ``{"count", "outcomes",
"cost_total"}`` (the sum of the costs it reported, as an exact decimal string).

Faked: ``POST /api/v1/chat/completions`` with ``Authorization: Bearer <api_key>`` (401
``{"error": {"message": "No auth credentials found", "code": 401}}`` without one, ``"User not
found."`` for another key). A JSON body that is not an object, or has neither ``messages`` nor
``prompt``, gets 400; every other path 404, in the same ``{"error": {"message", "code"}}`` shape.
A non-streaming request gets a ``chat.completion`` (``id`` ``gen-<time>-<20 chars>``, ``provider``,
``model`` echoed from the request or ``openrouter/auto``, one ``stop`` choice whose message is
the reply text, and ``usage``). ``"stream": true`` gets ``text/event-stream``: one ``:
OPENROUTER PROCESSING`` comment (``processing_comments``), a chunk with ``delta`` ``{"role":
"assistant", "content": ""}``, one chunk per word of the reply, a chunk with ``finish_reason``
``stop``, a chunk with ``"choices": []`` and ``usage``, then ``data: [DONE]``
(``usage_in_finish_chunk=True`` puts the usage on the finish chunk instead, as some upstream
providers do). Both carry an ``X-Generation-Id`` header.

Usage and cost: OpenRouter documents that every response carries full usage, cost included, and
that ``"usage": {"include": true}`` and ``stream_options.include_usage`` are deprecated and have
no effect (https://openrouter.ai/docs/use-cases/usage-accounting). So the fake always sends
``usage`` with ``prompt_tokens`` (a quarter of the request body's bytes, at least 1),
``completion_tokens`` (words of the reply), ``total_tokens``, ``cost`` (a JSON number, credits =
USD; the ``cost`` knob, written exactly as ``repr(float)``), ``is_byok``, and the details
objects; each record says whether the request asked (``usage_requested``). ``legacy_usage=True``
mimics the old behaviour instead: without the opt-in there is no ``cost`` in a non-streaming
usage and no usage chunk in a stream.

Knobs, all thread-safe: the ``reply``, ``cost`` and ``latency`` properties (latency is model time:
before the JSON body, or after the stream's first comment), and one-shot queues, each request that
passes auth and validation taking the head of every non-empty one (so they combine: delay, then
fail, else garbage, then drop or error): ``cost_next(*costs)``; ``usage_next(times, **fields)`` to
override usage fields (``None`` sends null, ``OMIT`` leaves the field out); ``fail_next(status,
times, body, headers)``; ``delay_next(seconds, times, stall=)`` (before the status line; ``stall``
pauses a stream after its first word); ``garbage_next(times, body)`` (200 with a non-JSON body, or
a broken ``data:`` event after the first word, the stream then going on); ``drop_next(times)``
(closes the connection half-way through the body, or after the first word of a stream);
``stream_error_next(times, message, code)`` (OpenRouter's mid-stream error event: top-level
``error`` and ``finish_reason`` ``error``, then the stream ends with no usage and no ``[DONE]``; a
non-streaming request gets HTTP 200 with ``{"error": {...}}`` in the body). Every request,
including rejected ones, is recorded (``requests``, ``count``, ``wait_for_requests``) with its
headers, parsed body, time, status, outcome and the cost it reported; ``record=False`` (what the
CLI uses) keeps only ``count``, ``cost_total`` and ``stats()``.

Not faked: the other endpoints (``/generation``, ``/models``, ``/key``, ``/credits``,
``/completions``, ``/responses``), request validation beyond the above (unknown models, parameter
ranges, context length), model routing and fallbacks (``models``, ``provider``), tool calls,
reasoning tokens, logprobs, images, real tokenization, per-model pricing, credit balances (402
only through ``fail_next``), rate limits (``fail_next(429, headers={"Retry-After": "1"})``),
periodic keep-alive comments during long waits, and compression.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import string
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDict

from tests.fakes._server import FakeServer

JSON = dict[str, Any]
API_PREFIX: Final = "/api/v1"
COMPLETIONS_PATH: Final = API_PREFIX + "/chat/completions"
PROCESSING_COMMENT: Final = b": OPENROUTER PROCESSING\n\n"
DONE_EVENT: Final = b"data: [DONE]\n\n"
DEFAULT_GARBAGE: Final = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"
_ALNUM = string.ascii_letters + string.digits
_dumps = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":")).encode
_STATUS_MESSAGES = {
    400: "Bad Request",
    402: "Insufficient credits. Add more using https://openrouter.ai/credits",
    403: "Forbidden",
    408: "Request timed out",
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No available model provider that meets your routing requirements",
}
_CHOICE_TAIL = ',"finish_reason":null,"native_finish_reason":null,"logprobs":null}]'
_FINISH = (
    '"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    '"finish_reason":"stop","native_finish_reason":"stop","logprobs":null}]'
)


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()
"""A ``usage_next`` value that leaves the field out of the usage object."""


@dataclass(eq=False)
class RecordedRequest:
    """One HTTP request to the fake. ``status``/``outcome``/``cost`` fill in as it is answered.

    ``outcome`` is ``pending``, ``ok``, ``unauthorized``, ``bad_request``, ``not_found``,
    ``failed`` (``fail_next``), ``garbage``, ``dropped``, ``stream_error`` or ``client_gone``.
    ``cost`` is the ``usage.cost`` value sent, or None when no usage was sent.
    """

    method: str
    path: str
    headers: CIMultiDict[str]
    body: Any
    size: int
    at: float
    stream: bool = False
    usage_requested: bool = False
    status: int = 0
    outcome: str = "pending"
    generation_id: str | None = None
    cost: Any = None

    @property
    def model(self) -> Any:
        return self.body.get("model") if isinstance(self.body, dict) else None


@dataclass(frozen=True)
class _Fail:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass
class _Plan:
    """What the knobs say about one request."""

    cost: float
    usage: JSON | None = None
    delay: float = 0.0
    stall: float = 0.0
    fail: _Fail | None = None
    garbage: bytes | None = None
    drop: bool = False
    error: JSON | None = None


class _Reply:
    """The reply text, split into the pieces a stream sends, pre-encoded once."""

    def __init__(self, text: str) -> None:
        self.text = text
        words = text.split(" ")
        pieces = [word + " " for word in words[:-1]] + words[-1:]
        self.pieces = [p for p in pieces if p] or [""]
        self.tokens = len(self.pieces)
        self.choices = [
            '"choices":[{"index":0,"delta":{"role":"assistant","content":'
            + _dumps(piece)
            + "}"
            + _CHOICE_TAIL
            for piece in ["", *self.pieces]
        ]


def error_body(status: int, message: str | None = None, **metadata: Any) -> bytes:
    """OpenRouter's error shape ``{"error": {"message", "code", "metadata"?}}`` as bytes."""
    error: JSON = {"message": message or _STATUS_MESSAGES.get(status, "Error"), "code": status}
    return _dumps({"error": error | ({"metadata": metadata} if metadata else {})}).encode()


def _cost(value: float | int | str | Decimal) -> float:
    cost = float(Decimal(value) if isinstance(value, str) else value)
    if cost != cost or cost in (float("inf"), float("-inf")):
        raise ValueError(f"cost must be finite, not {value!r}")
    return cost


def _generation_id(now: float) -> str:
    return f"gen-{int(now)}-" + "".join(random.choices(_ALNUM, k=20))


class FakeOpenRouter(FakeServer):
    """The fake API server. Every public method and property is thread-safe."""

    _backlog = 1024  # benchmarks open many connections at once

    def __init__(
        self,
        api_key: str = "sk-or-v1-fake",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reply: str = "fake reply",
        cost: float | int | str | Decimal = 0.0012,
        latency: float = 0.0,
        provider: str = "FakeProvider",
        processing_comments: int = 1,
        usage_in_finish_chunk: bool = False,
        legacy_usage: bool = False,
        record: bool = True,
        max_body: int = 32 * 1024 * 1024,
    ) -> None:
        self.api_key, self.provider = api_key, provider
        self.processing_comments = processing_comments
        self.usage_in_finish_chunk, self.legacy_usage = usage_in_finish_chunk, legacy_usage
        super().__init__(host, port)
        self._record, self._client_max_size = record, max_body
        self._reply = _Reply(reply)
        self._cost = _cost(cost)
        self._latency = float(latency)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._count = 0
        self._outcomes: Counter[str] = Counter()
        self._cost_total = Decimal(0)
        self._costs: deque[float] = deque()
        self._usages: deque[JSON] = deque()
        self._delays: deque[tuple[float, float]] = deque()
        self._fails: deque[_Fail] = deque()
        self._garbage: deque[bytes] = deque()
        self._drops = 0
        self._errors: deque[JSON] = deque()

    # -- URLs (start, stop and context managers: FakeServer) --------------------------------
    @property
    def base_url(self) -> str:
        """``http://host:port/api/v1``, what OpenAI-style clients take as their base URL."""
        return super().base_url + API_PREFIX

    @property
    def completions_url(self) -> str:
        return self.base_url + "/chat/completions"

    # -- knobs ------------------------------------------------------------------------------
    @property
    def reply(self) -> str:
        return self._reply.text

    @reply.setter
    def reply(self, text: str) -> None:
        self._reply = _Reply(text)

    @property
    def cost(self) -> float:
        """``usage.cost`` of each request, in USD credits; it goes on the wire as ``repr(cost)``.

        Set it from a float, int, ``Decimal`` or decimal string; ``Decimal(repr(fake.cost))`` is
        then the exact value a client reads.
        """
        return self._cost

    @cost.setter
    def cost(self, value: float | int | str | Decimal) -> None:
        self._cost = _cost(value)

    @property
    def latency(self) -> float:
        """Seconds of model time per request (before the body, or after a stream's comment)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._latency = float(seconds)

    def cost_next(self, *costs: float | int | str | Decimal) -> None:
        """The next requests report these costs, in order; then ``cost`` again."""
        parsed = [_cost(c) for c in costs]
        with self._lock:
            self._costs.extend(parsed)

    def usage_next(self, times: int = 1, **fields: Any) -> None:
        """Override usage fields of the next ``times`` requests (``OMIT`` drops a field)."""
        with self._lock:
            self._usages.extend(dict(fields) for _ in range(times))

    def fail_next(
        self,
        status: int = 500,
        times: int = 1,
        body: JSON | str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (default: OpenRouter's error body)."""
        if body is None:
            raw = error_body(status)
        elif isinstance(body, dict):
            raw = _dumps(body).encode()
        else:
            raw = body.encode() if isinstance(body, str) else bytes(body)
        fail = _Fail(status, raw, dict(headers or {}))
        with self._lock:
            self._fails.extend([fail] * times)

    def delay_next(self, seconds: float, times: int = 1, *, stall: float = 0.0) -> None:
        """Hold the status line of the next ``times`` responses for ``seconds``; a stream
        also stalls ``stall`` seconds after its first word."""
        with self._lock:
            self._delays.extend([(float(seconds), float(stall))] * times)

    def garbage_next(self, times: int = 1, body: str | bytes | None = None) -> None:
        """Next ``times`` responses: 200 ``application/json`` with a non-JSON body, or (streams)
        a broken ``data:`` event after the first word, the stream then carrying on. A given
        ``body`` replaces either verbatim (end a stream event with a blank line yourself)."""
        raw = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._garbage.extend([raw or b""] * times)

    def drop_next(self, times: int = 1) -> None:
        """Close the connection half-way through the next ``times`` responses."""
        with self._lock:
            self._drops += times

    def stream_error_next(
        self,
        times: int = 1,
        message: str = "Provider disconnected unexpectedly",
        code: int | str = "server_error",
    ) -> None:
        """Next ``times`` requests fail after the first word, the way OpenRouter reports an
        upstream failure once the 200 is sent."""
        with self._lock:
            self._errors.extend({"code": code, "message": message} for _ in range(times))

    def clear(self) -> None:
        """Forget recorded requests, statistics and every queued knob."""
        with self._lock:
            self._requests.clear()
            self._count, self._outcomes, self._cost_total = 0, Counter(), Decimal(0)
            for queue in (self._costs, self._usages, self._delays, self._fails):
                queue.clear()
            self._garbage.clear()
            self._errors.clear()
            self._drops = 0

    # -- what happened ----------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, oldest first (empty when ``record=False``)."""
        with self._lock:
            return list(self._requests)

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    @property
    def cost_total(self) -> Decimal:
        """The exact sum of every ``usage.cost`` number sent."""
        with self._lock:
            return self._cost_total

    def stats(self) -> JSON:
        with self._lock:
            outcomes = dict(self._outcomes)
            return {"count": self._count, "outcomes": outcomes, "cost_total": str(self._cost_total)}

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until ``n`` requests have arrived; return the recorded ones."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: self._count >= n, timeout):
                raise TimeoutError(f"{self._count} requests arrived, not {n}, in {timeout}s")
            return list(self._requests)

    # -- HTTP -------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/__fake/"):
            return web.json_response(self.stats())
        at, raw = time.time(), await request.read()
        body: Any = None
        with contextlib.suppress(ValueError):
            body = json.loads(raw) if raw else None
        headers = CIMultiDict(request.headers) if self._record else request.headers
        rec = RecordedRequest(request.method, request.path, headers, body, len(raw), at)
        if isinstance(body, dict):
            rec.stream = body.get("stream") is True
            usage, options = body.get("usage"), body.get("stream_options")
            rec.usage_requested = (isinstance(usage, dict) and usage.get("include") is True) or (
                isinstance(options, dict) and options.get("include_usage") is True
            )
        with self._arrived:
            self._count += 1
            if self._record:
                self._requests.append(rec)
            self._arrived.notify_all()
        try:
            return await self._respond(request, rec)
        finally:
            with self._lock:
                self._outcomes[rec.outcome] += 1
                if isinstance(rec.cost, float | int) and not isinstance(rec.cost, bool):
                    self._cost_total += Decimal(repr(rec.cost))

    async def _respond(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        if request.method != "POST" or request.path.rstrip("/") != COMPLETIONS_PATH:
            return self._error(rec, 404, "not_found", "Not Found")
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not key:
            return self._error(rec, 401, "unauthorized", "No auth credentials found")
        if key != self.api_key:
            return self._error(rec, 401, "unauthorized", "User not found.")
        body = rec.body
        if not isinstance(body, dict) or not (body.get("messages") or body.get("prompt")):
            message = 'Input required: specify "prompt" or "messages"'
            if rec.size and body is None:
                message = "Invalid JSON in request body"
            return self._error(rec, 400, "bad_request", message)
        plan = self._plan()
        if plan.delay:
            await asyncio.sleep(plan.delay)
        if plan.fail is not None:
            fail = plan.fail
            rec.status, rec.outcome = fail.status, "failed"
            return web.Response(
                status=fail.status,
                body=fail.body,
                headers={"Content-Type": "application/json", **fail.headers},
            )
        rec.generation_id = _generation_id(rec.at)
        if rec.stream:
            return await self._stream(request, rec, plan)
        return await self._complete(request, rec, plan)

    def _error(self, rec: RecordedRequest, status: int, outcome: str, message: str) -> web.Response:
        rec.status, rec.outcome = status, outcome
        body = error_body(status, message)
        return web.Response(status=status, body=body, content_type="application/json")

    def _plan(self) -> _Plan:
        with self._lock:
            plan = _Plan(self._costs.popleft() if self._costs else self._cost)
            if self._usages:
                plan.usage = self._usages.popleft()
            if self._delays:
                plan.delay, plan.stall = self._delays.popleft()
            if self._fails:
                plan.fail = self._fails.popleft()
            if self._garbage:
                plan.garbage = self._garbage.popleft()
            if self._drops:
                self._drops -= 1
                plan.drop = True
            if self._errors:
                plan.error = self._errors.popleft()
        return plan

    def _usage(self, rec: RecordedRequest, reply: _Reply, plan: _Plan) -> JSON:
        prompt = max(1, rec.size // 4)
        usage: JSON = {
            "prompt_tokens": prompt,
            "completion_tokens": reply.tokens,
            "total_tokens": prompt + reply.tokens,
            "cost": plan.cost,
            "is_byok": False,
            "prompt_tokens_details": {
                "cached_tokens": 0,
                "cache_write_tokens": 0,
                "audio_tokens": 0,
                "video_tokens": 0,
            },
            "cost_details": {"upstream_inference_cost": None},
            "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0},
        }
        if self.legacy_usage and not rec.usage_requested:
            for name in ("cost", "is_byok", "cost_details"):
                del usage[name]
        for name, value in (plan.usage or {}).items():
            if value is OMIT:
                usage.pop(name, None)
            else:
                usage[name] = value
        rec.cost = usage.get("cost")
        return usage

    async def _complete(
        self, request: web.Request, rec: RecordedRequest, plan: _Plan
    ) -> web.StreamResponse:
        if self._latency:
            await asyncio.sleep(self._latency)
        headers = {"X-Generation-Id": rec.generation_id or ""}
        if plan.garbage is not None:
            rec.status, rec.outcome = 200, "garbage"
            garbage = plan.garbage or DEFAULT_GARBAGE
            return web.Response(body=garbage, content_type="application/json", headers=headers)
        if plan.error is not None:
            rec.status, rec.outcome = 200, "stream_error"
            body = _dumps({"error": plan.error}).encode()
            return web.Response(body=body, content_type="application/json", headers=headers)
        reply = self._reply
        completion = {
            "id": rec.generation_id,
            "provider": self.provider,
            "model": rec.body.get("model") or "openrouter/auto",
            "object": "chat.completion",
            "created": int(rec.at),
            "choices": [
                {
                    "logprobs": None,
                    "finish_reason": "stop",
                    "native_finish_reason": "stop",
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": reply.text,
                        "refusal": None,
                        "reasoning": None,
                    },
                }
            ],
            "system_fingerprint": None,
            "usage": self._usage(rec, reply, plan),
        }
        body = _dumps(completion).encode()
        rec.status = 200
        if not plan.drop:
            rec.outcome = "ok"
            return web.Response(body=body, content_type="application/json", headers=headers)
        rec.outcome, rec.cost = "dropped", None
        response = web.StreamResponse(headers=headers)
        response.content_type, response.content_length = "application/json", len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        self._hang_up(request)
        return response

    async def _stream(
        self, request: web.Request, rec: RecordedRequest, plan: _Plan
    ) -> web.StreamResponse:
        reply = self._reply
        head = (
            f'data: {{"id":"{rec.generation_id}","provider":{_dumps(self.provider)},'
            f'"model":{_dumps(rec.body.get("model") or "openrouter/auto")},'
            f'"object":"chat.completion.chunk","created":{int(rec.at)},'
        )
        events: list[bytes | float | None] = [PROCESSING_COMMENT * self.processing_comments]
        events += [self._latency] if self._latency else []
        events += [(head + reply.choices[0] + "}\n\n").encode()]
        events += [(head + reply.choices[1] + "}\n\n").encode()]
        outcome = "ok"
        if plan.garbage is not None:
            broken = f'data: {{"id":"{rec.generation_id}","choices":[{{"delta":{{"content":"\n\n'
            events.append(plan.garbage or broken.encode())
            outcome = "garbage"
        events += [plan.stall] if plan.stall else []
        if plan.drop:
            events.append(None)  # hang up here
            outcome = "dropped"
        elif plan.error is not None:
            error = _dumps(plan.error)
            tail = '"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\n'
            events.append(f'{head}"error":{error},{tail}'.encode())
            outcome = "stream_error"
        else:
            events += [(head + choices + "}\n\n").encode() for choices in reply.choices[2:]]
            usage = None
            if not self.legacy_usage or rec.usage_requested:
                usage = _dumps(self._usage(rec, reply, plan))
            if usage is not None and self.usage_in_finish_chunk:
                events.append(f'{head}{_FINISH},"usage":{usage}}}\n\n'.encode())
            else:
                events.append(f"{head}{_FINISH}}}\n\n".encode())
                if usage is not None:
                    events.append(f'{head}"choices":[],"usage":{usage}}}\n\n'.encode())
            events.append(DONE_EVENT)
        response = web.StreamResponse(
            headers={"Cache-Control": "no-cache", "X-Generation-Id": rec.generation_id or ""}
        )
        response.content_type = "text/event-stream"
        rec.status = 200
        try:
            await response.prepare(request)
            pending: list[bytes] = []
            for event in events:
                if isinstance(event, bytes):
                    pending.append(event)
                    continue
                if pending:
                    await response.write(b"".join(pending))
                    pending.clear()
                if event is None:
                    rec.outcome, rec.cost = outcome, None
                    self._hang_up(request)
                    return response
                await asyncio.sleep(event)
            rec.outcome = outcome  # before the last bytes: a client may look at once
            await response.write(b"".join(pending))
            await response.write_eof()
        except ConnectionError:
            rec.outcome = "client_gone"
        return response

    @staticmethod
    def _hang_up(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.close()


# -- its own process ---------------------------------------------------------------------------
async def _serve_forever(fake: FakeOpenRouter) -> None:
    await fake._open_site()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {fake.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake._close_site()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.openrouter", description="Serve a fake OpenRouter API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default="sk-or-v1-fake")
    parser.add_argument("--cost", default="0.0012", help="usage.cost per request, in USD")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="model time per request")
    parser.add_argument("--reply", default="fake reply")
    args = parser.parse_args(argv)
    fake = FakeOpenRouter(
        args.api_key,
        host=args.host,
        port=args.port,
        reply=args.reply,
        cost=args.cost,
        latency=args.latency_ms / 1000,
        record=False,
    )
    asyncio.run(_serve_forever(fake))


if __name__ == "__main__":
    main()
