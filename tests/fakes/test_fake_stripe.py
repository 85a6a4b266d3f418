"""Tests of the Stripe fake itself, through the real ``stripe`` library (sync and async)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import httpx
import pytest
import stripe
from aiohttp import web
from stripe.params.checkout import SessionCreateParams, SessionCreateParamsLineItem

from tests.fakes.stripe import PERIOD, FakeStripe, parse_form

KEY = "sk_test_fake_123"
SECRET = "whsec_test_secret"
HOSTING: SessionCreateParamsLineItem = {
    "quantity": 1,
    "price_data": {
        "currency": "usd",
        "unit_amount": 900,
        "product_data": {"name": "Bot hosting"},
        "recurring": {"interval": "month"},
    },
}
SUBSCRIPTION: SessionCreateParams = {
    "mode": "subscription",
    "line_items": [HOSTING],
    "client_reference_id": "tg-4242",
    "metadata": {"order_id": "17", "kind": "hosting"},
    "subscription_data": {"metadata": {"bot_id": "b-1"}},
    "success_url": "https://t.me/shop_bot",
    "cancel_url": "https://t.me/shop_bot?cancel",
}


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(api_key=KEY) as server:
        yield server


@pytest.fixture
def client(fake: FakeStripe) -> Iterator[stripe.StripeClient]:
    http = stripe.RequestsClient()
    yield stripe.StripeClient(
        KEY, base_addresses={"api": fake.base_url}, http_client=http, max_network_retries=0
    )
    http.close()  # type: ignore[no-untyped-call]


def test_parse_form_bracket_notation() -> None:
    pairs = [
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][quantity]", "1"),
        ("line_items[1][price]", "price_x"),
        ("metadata[order_id]", "9"),
        ("expand[]", "a"),
        ("expand[]", "b"),
        ("mode", "payment"),
    ]
    assert parse_form(pairs) == {
        "line_items": [{"price_data": {"currency": "usd"}, "quantity": "1"}, {"price": "price_x"}],
        "metadata": {"order_id": "9"},
        "expand": ["a", "b"],
        "mode": "payment",
    }


def test_subscription_checkout_lifecycle(fake: FakeStripe, client: stripe.StripeClient) -> None:
    session = client.v1.checkout.sessions.create(params=SUBSCRIPTION)
    assert session.id.startswith("cs_test_") and session.object == "checkout.session"
    assert (session.status, session.payment_status, session.mode) == (
        "open",
        "unpaid",
        "subscription",
    )
    assert (session.amount_total, session.currency) == (900, "usd")
    assert session.url == f"{fake.base_url}/pay/{session.id}"
    assert session.metadata is not None
    assert session.metadata.to_dict() == {"order_id": "17", "kind": "hosting"}
    assert session.client_reference_id == "tg-4242"
    assert session.expires_at > time.time() + 23 * 3600
    sent = fake.calls_for("POST", "/v1/checkout/sessions")[0].params
    assert sent["line_items"][0]["price_data"]["recurring"] == {"interval": "month"}
    assert sent["subscription_data"] == {"metadata": {"bot_id": "b-1"}}

    again = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["line_items"]})
    assert again.line_items is not None and again.line_items.data[0].amount_total == 900

    event = fake.complete_checkout(session.id, email="alice@example.com")
    assert event["object"] == "event" and event["id"].startswith("evt_")
    assert event["type"] == "checkout.session.completed" and event["livemode"] is False
    assert event["api_version"] == stripe.api_version and isinstance(event["created"], int)
    done = event["data"]["object"]
    assert (done["status"], done["payment_status"]) == ("complete", "paid")
    assert done["metadata"] == {"order_id": "17", "kind": "hosting"}
    assert done["client_reference_id"] == "tg-4242" and done["payment_intent"] is None
    assert done["customer"].startswith("cus_") and done["subscription"].startswith("sub_")
    assert done["customer_details"]["email"] == "alice@example.com"
    assert client.v1.events.retrieve(event["id"]).type == "checkout.session.completed"
    assert client.v1.customers.retrieve(done["customer"]).email == "alice@example.com"

    sub = client.v1.subscriptions.retrieve(done["subscription"])
    assert sub.status == "active" and sub.metadata.to_dict() == {"bot_id": "b-1"}
    end = sub["items"].data[0].current_period_end
    assert abs(end - (time.time() + PERIOD)) < 60
    first_paid = fake.events_of("invoice.paid")[0]["data"]["object"]
    assert first_paid["billing_reason"] == "subscription_create"
    assert first_paid["parent"]["subscription_details"] == {
        "metadata": {"bot_id": "b-1"},
        "subscription": sub.id,
    }
    assert [e["type"] for e in fake.events] == [
        "customer.created",
        "customer.subscription.created",
        "invoice.paid",
        "invoice.payment_succeeded",
        "checkout.session.completed",
    ]

    renewal = fake.renew(sub.id)
    invoice = renewal["data"]["object"]
    assert renewal["type"] == "invoice.paid" and invoice["status"] == "paid"
    assert invoice["billing_reason"] == "subscription_cycle" and invoice["customer"] == sub.customer
    assert invoice["parent"]["subscription_details"]["subscription"] == sub.id
    assert invoice["parent"]["subscription_details"]["metadata"] == {"bot_id": "b-1"}
    assert invoice["lines"]["data"][0]["period"]["end"] == end + PERIOD
    assert "subscription" not in invoice  # removed from Invoice in the current API version
    assert fake.subscriptions[sub.id]["items"]["data"][0]["current_period_end"] == end + PERIOD


def test_payment_mode_refund_and_dispute(fake: FakeStripe, client: stripe.StripeClient) -> None:
    price = fake.add_price(500, product_name="LLM credit")
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "line_items": [{"price": price, "quantity": 3}],
            "payment_intent_data": {"metadata": {"topup_id": "t-1"}},
            "metadata": {"topup_id": "t-1"},
            "success_url": "https://t.me/shop_bot",
        }
    )
    assert (session.amount_total, session.mode) == (1500, "payment")
    event = fake.complete_checkout(session.id)
    paid = event["data"]["object"]
    assert paid["payment_intent"].startswith("pi_") and paid["subscription"] is None
    assert paid["customer"] is None  # payment mode makes no Customer unless customer_creation
    intent = client.v1.payment_intents.retrieve(paid["payment_intent"])
    assert intent.amount == 1500 and intent.metadata.to_dict() == {"topup_id": "t-1"}

    refund = fake.refund(session.id, amount=500)
    charge = refund["data"]["object"]
    assert refund["type"] == "charge.refunded" and charge["payment_intent"] == intent.id
    assert (charge["amount_refunded"], charge["refunded"]) == (500, False)
    assert refund["data"]["previous_attributes"] == {"amount_refunded": 0, "refunded": False}
    assert charge["metadata"] == {"topup_id": "t-1"}
    dispute = fake.dispute(session.id)
    assert dispute["type"] == "charge.dispute.created"
    assert dispute["data"]["object"]["charge"] == charge["id"]
    assert dispute["data"]["object"]["payment_intent"] == intent.id


def test_errors(fake: FakeStripe, client: stripe.StripeClient) -> None:
    http = stripe.RequestsClient()
    wrong = stripe.StripeClient(
        "sk_test_wrong", base_addresses={"api": fake.base_url}, http_client=http
    )
    with pytest.raises(stripe.AuthenticationError) as auth:
        wrong.v1.checkout.sessions.create(params=SUBSCRIPTION)
    http.close()  # type: ignore[no-untyped-call]
    assert auth.value.http_status == 401
    assert isinstance(body := auth.value.json_body, dict)
    assert body["error"]["type"] == "invalid_request_error"

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.checkout.sessions.create(
            params={"mode": "payment", "line_items": [{"price": "x"}]}
        )
    assert missing.value.param == "line_items[0][quantity]" and missing.value.http_status == 400
    with pytest.raises(stripe.InvalidRequestError) as no_mode:
        client.v1.checkout.sessions.create(params={"line_items": [HOSTING]})
    assert no_mode.value.param == "mode"
    with pytest.raises(stripe.InvalidRequestError, match="recurring price"):
        client.v1.checkout.sessions.create(params={"mode": "payment", "line_items": [HOSTING]})
    bad_data: SessionCreateParams = {
        **SUBSCRIPTION,
        "payment_intent_data": {"metadata": {"a": "b"}},
    }
    with pytest.raises(stripe.InvalidRequestError, match="payment_intent_data"):
        client.v1.checkout.sessions.create(params=bad_data)
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.checkout.sessions.create(params=cast(Any, {**SUBSCRIPTION, "colour": "red"}))
    assert unknown.value.param == "colour"
    with pytest.raises(stripe.InvalidRequestError) as absent:
        client.v1.subscriptions.retrieve("sub_nope")
    assert (absent.value.http_status, absent.value.code) == (404, "resource_missing")

    response = httpx.get(f"{fake.base_url}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert [c.status for c in fake.calls_for("*", "/v1/nothing")] == [404]
    assert not fake.sessions


def test_idempotency(fake: FakeStripe, client: stripe.StripeClient) -> None:
    first = client.v1.checkout.sessions.create(
        params=SUBSCRIPTION, options={"idempotency_key": "k1"}
    )
    second = client.v1.checkout.sessions.create(
        params=SUBSCRIPTION, options={"idempotency_key": "k1"}
    )
    assert first.id == second.id and len(fake.sessions) == 1
    assert [c.idempotency_key for c in fake.calls] == ["k1", "k1"]
    other: SessionCreateParams = {**SUBSCRIPTION, "client_reference_id": "someone-else"}
    with pytest.raises(stripe.IdempotencyError):
        client.v1.checkout.sessions.create(params=other, options={"idempotency_key": "k1"})
    third = client.v1.checkout.sessions.create(params=SUBSCRIPTION)
    assert third.id != first.id and len(fake.sessions) == 2


def test_dunning_cancel_and_expire(fake: FakeStripe, client: stripe.StripeClient) -> None:
    session = client.v1.checkout.sessions.create(params=SUBSCRIPTION)
    sub_id = fake.complete_checkout(session.id)["data"]["object"]["subscription"]
    failed = fake.fail_payment(sub_id)
    assert failed["type"] == "invoice.payment_failed"
    assert failed["data"]["object"]["status"] == "open"
    assert client.v1.subscriptions.retrieve(sub_id).status == "past_due"
    retry = fake.renew(sub_id)["data"]["object"]
    assert retry["id"] == failed["data"]["object"]["id"] and retry["attempt_count"] == 2
    assert fake.subscriptions[sub_id]["status"] == "active"

    updated = client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    assert updated.cancel_at_period_end is True
    change = fake.events_of("customer.subscription.updated")[-1]
    assert change["data"]["previous_attributes"]["cancel_at_period_end"] is False
    assert change["request"]["id"].startswith("req_")
    assert fake.renew(sub_id)["type"] == "customer.subscription.deleted"
    with pytest.raises(ValueError, match="canceled"):
        fake.renew(sub_id)

    other = client.v1.checkout.sessions.create(params=SUBSCRIPTION)
    other_sub = fake.complete_checkout(other.id)["data"]["object"]["subscription"]
    assert client.v1.subscriptions.cancel(other_sub).status == "canceled"
    assert fake.events[-1]["type"] == "customer.subscription.deleted"

    open_session = client.v1.checkout.sessions.create(params=SUBSCRIPTION)
    assert client.v1.checkout.sessions.expire(open_session.id).status == "expired"
    assert fake.events[-1]["type"] == "checkout.session.expired"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(open_session.id)
    with pytest.raises(ValueError, match="expired"):
        fake.complete_checkout(open_session.id)


def test_legacy_fields_expand_and_injected_faults() -> None:
    with FakeStripe(api_key=KEY, legacy_fields=True) as fake:
        http = stripe.RequestsClient()
        legacy = stripe.StripeClient(
            KEY, base_addresses={"api": fake.base_url}, http_client=http, max_network_retries=1
        )
        session = legacy.v1.checkout.sessions.create(params=SUBSCRIPTION)
        fake.complete_checkout(session.id)
        full = legacy.v1.checkout.sessions.retrieve(
            session.id, params={"expand": ["subscription", "invoice"]}
        )
        assert isinstance(full.subscription, stripe.Subscription)
        assert full.subscription.metadata.to_dict() == {"bot_id": "b-1"}
        assert full["invoice"]["subscription"] == full.subscription.id  # pre-2025 field
        assert full.subscription["current_period_end"] > time.time()  # pre-2025 field
        with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
            legacy.v1.checkout.sessions.retrieve(session.id, params={"expand": ["nope"]})

        fake.fail_next("GET", "/v1/subscriptions/")  # one 500, retried by the library
        assert legacy.v1.subscriptions.retrieve(full.subscription.id).status == "active"
        fake.fail_next("*", "/v1/", status=429)  # stripe-python does not retry 429s
        with pytest.raises(stripe.RateLimitError):
            legacy.v1.subscriptions.retrieve(full.subscription.id)
        assert [c.status for c in fake.calls_for("GET", "/v1/subscriptions/")] == [500, 200, 429]
        http.close()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
async def test_async_client(fake: FakeStripe, kind: str) -> None:
    # stripe.HTTPXClient sends the form body as httpx ``data=<str>``, which httpx 0.28 warns
    # about; with filterwarnings=error that warning becomes an APIConnectionError, hence the mark.
    http = stripe.AIOHTTPClient() if kind == "aiohttp" else stripe.HTTPXClient()
    client = stripe.StripeClient(
        KEY, base_addresses={"api": fake.base_url}, http_client=http, max_network_retries=0
    )
    try:
        session = await client.v1.checkout.sessions.create_async(params=SUBSCRIPTION)
        assert (await client.v1.checkout.sessions.retrieve_async(session.id)).status == "open"
        sub_id = fake.complete_checkout(session.id)["data"]["object"]["subscription"]
        sub = await client.v1.subscriptions.update_async(sub_id, params={"metadata": {"x": "1"}})
        assert sub.metadata.to_dict() == {"bot_id": "b-1", "x": "1"}
        assert (await client.v1.subscriptions.cancel_async(sub_id)).status == "canceled"
        with pytest.raises(stripe.InvalidRequestError):
            await client.v1.checkout.sessions.create_async(params={"mode": "subscription"})
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


class _Receiver:
    """Verifies deliveries like our webhook handler should, recording the outcome."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def check(self, payload: bytes, signature: str | None) -> int:
        try:
            event = stripe.Webhook.construct_event(payload, signature, SECRET)
        except stripe.SignatureVerificationError:
            self.outcomes.append("rejected")
            return 400
        self.outcomes.append(event.type)
        return 200


@pytest.fixture
async def aio_receiver() -> AsyncIterator[tuple[str, _Receiver]]:
    receiver = _Receiver()

    async def hook(request: web.Request) -> web.Response:
        status = receiver.check(await request.read(), request.headers.get("Stripe-Signature"))
        return web.Response(status=status, text="ok" if status == 200 else "bad signature")

    app = web.Application()
    app.router.add_post("/stripe/webhook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/stripe/webhook", receiver
    await runner.cleanup()


@pytest.fixture
def sync_receiver() -> Iterator[tuple[str, _Receiver]]:
    receiver = _Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = receiver.check(body, self.headers.get("Stripe-Signature"))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", receiver
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_deliver_signed_forged_tampered_stale(
    fake: FakeStripe, client: stripe.StripeClient, sync_receiver: tuple[str, _Receiver]
) -> None:
    url, receiver = sync_receiver
    session = client.v1.checkout.sessions.create(params=SUBSCRIPTION)
    event = fake.complete_checkout(session.id)
    assert fake.deliver(event, url, SECRET)[0] == 200
    assert fake.deliver(event, url, SECRET, sign_secret="whsec_forged")[0] == 400
    assert fake.deliver(event, url, SECRET, tamper=True)[0] == 400
    assert fake.deliver(event, url, SECRET, timestamp=int(time.time()) - 3600)[0] == 400
    assert receiver.outcomes == ["checkout.session.completed"] + ["rejected"] * 3
    assert [d.status for d in fake.deliveries] == [200, 400, 400, 400]

    body, headers = fake.signed(event, SECRET)
    verified = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET)
    assert verified.id == event["id"] and verified.data.object.id == session.id


async def test_adeliver(fake: FakeStripe, aio_receiver: tuple[str, _Receiver]) -> None:
    url, receiver = aio_receiver
    session = fake.add_price(900, interval="month")
    assert session.startswith("price_")
    customer = fake.add_customer("bob@example.com")
    event = fake.events_of("customer.created")[0]
    assert event["data"]["object"]["id"] == customer["id"]
    assert await fake.adeliver(event, url, SECRET) == (200, "ok")
    status, text = await fake.adeliver(event, url, SECRET, sign_secret="whsec_other")
    assert (status, text) == (400, "bad signature")
    assert (await fake.adeliver(event, url, SECRET, tamper=True))[0] == 400
    assert receiver.outcomes == ["customer.created", "rejected", "rejected"]
