"""A stateful fake of the Stripe API (the parts storebot uses) that speaks Stripe's wire protocol.

The real ``stripe`` library runs unchanged against it::

    client = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.base_url})
    aclient = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.base_url},
                                  http_client=stripe.AIOHTTPClient())  # then *_async methods

Requests are form-encoded with bracket notation (``line_items[0][price_data][currency]``) and
parsed into nested dicts/lists; ``Authorization: Bearer <api_key>`` is checked (401 otherwise);
``Idempotency-Key`` replays the stored response (``Idempotent-Replayed: true``) and answers 400
``idempotency_error`` when reused with other parameters. Errors have Stripe's shape
``{"error": {"type", "message", "param"?, "code"?}}``; unknown top-level parameters are rejected
like Stripe does ("Received unknown parameter"), with the allowed names taken from the stripe
library's own ``*Params`` types. The aiohttp server runs in its own thread and loop.

Faked: POST /v1/checkout/sessions (mode payment or subscription; ``price_data`` or a price from
``add_price``; metadata, client_reference_id, customer, subscription_data / payment_intent_data
metadata), GET /v1/checkout/sessions/{id} (``expand[]=line_items``, ``subscription``, ...), POST
/v1/checkout/sessions/{id}/expire, POST and DELETE /v1/subscriptions/{id} (metadata,
cancel_at_period_end, description), GET of customers, subscriptions, invoices, charges,
payment_intents, prices, products, disputes and events by id. The customer's and Stripe's side:
``complete_checkout``, ``expire_checkout``, ``renew``, ``fail_payment``, ``cancel``, ``refund``,
``dispute``; each stores and returns an Event; webhooks go out only when a test calls
``deliver``/``adeliver`` (signed with the library's ``WebhookSignature``).

Shapes follow the API version pinned by the library (``stripe.api_version``, basil and later):
``current_period_start/end`` live on subscription *items*; invoices name their subscription and
its metadata snapshot in ``parent.subscription_details.{subscription,metadata}`` (and each line
in ``parent.subscription_item_details``, ``period.{start,end}``, ``metadata``) -- there is no
top-level ``invoice.subscription`` / ``charge`` / ``payment_intent`` / ``paid``. Pass
``legacy_fields=True`` to also get those pre-2025 fields (and ``subscription.current_period_*``).
Read items as ``sub["items"]`` (``sub.items`` is the dict method on StripeObjects). Payment-mode
sessions get no Customer (``customer`` null) unless ``customer_creation=always`` or ``customer``.

Not faked: payment methods, cards and 3DS (a checkout completes only by ``complete_checkout``),
setup mode, prices other than flat per-unit, quantities changes, proration, trials, coupons,
tax, currency conversion, list endpoints, search, Connect, test clocks, InvoicePayments, refund
and dispute objects' own endpoints, automatic dunning (``fail_payment`` and ``cancel`` are
explicit), automatic expiry after ``expires_at``, rate limits (use ``fail_next``), the hosted
page behind ``session.url`` (``{base_url}/pay/<id>`` answers 404), and every other path (404).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx
import stripe
from aiohttp import web
from stripe.params import SubscriptionCancelParams, SubscriptionUpdateParams
from stripe.params.checkout import SessionCreateParams

from tests.fakes._server import FakeServer

JSON = dict[str, Any]
DAY = 86_400
PERIOD = 30 * DAY
_OPTIONS = {"api_key", "content_type", "headers", "idempotency_key", "max_network_retries"}
_OPTIONS |= {"stripe_account", "stripe_context", "stripe_version"}
_SESSION_PARAMS = set(SessionCreateParams.__optional_keys__) - _OPTIONS
_SUB_UPDATE_PARAMS = set(SubscriptionUpdateParams.__optional_keys__) - _OPTIONS
_SUB_UPDATE_DONE = {"metadata", "cancel_at_period_end", "cancellation_details", "description"}
_SUB_UPDATE_DONE |= {"expand"}
_SUB_CANCEL_PARAMS = set(SubscriptionCancelParams.__optional_keys__) - _OPTIONS
_KINDS = {  # URL collection -> object type
    "checkout/sessions": "checkout.session",
    "subscriptions": "subscription",
    "customers": "customer",
    "invoices": "invoice",
    "charges": "charge",
    "payment_intents": "payment_intent",
    "prices": "price",
    "products": "product",
    "disputes": "dispute",
    "events": "event",
}
_ECHOED = ("cancel_url", "client_reference_id", "customer", "customer_email", "success_url")
_IDEM_MISMATCH = (
    "Keys for idempotent requests can only be used with the same parameters they were first "
    "used with. Try using a key other than '{key}' if you meant to execute a different request."
)
_NO_RECURRING = (
    "You must provide at least one recurring price in `subscription` mode when using prices."
)
_RECURRING_IN_PAYMENT = (
    "You specified `payment` mode but passed a recurring price. Either switch to "
    "`subscription` mode or use only one-time prices."
)
_CANCELED_UPDATE = "A canceled subscription can only update its cancellation_details and metadata."
_KEY_RE = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_ALNUM = string.ascii_letters + string.digits


class StripeError(Exception):
    """An API error, answered with ``status`` as ``{"error": {"type", "message", ...}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("api_error" if status >= 500 else "invalid_request_error")

    def body(self) -> JSON:
        error: JSON = {"type": self.type, "message": self.message}
        error |= {"param": self.param} if self.param else {}
        return {"error": error | ({"code": self.code} if self.code else {})}


def _bad(message: str, param: str | None = None) -> StripeError:
    return StripeError(400, message, param)


@dataclass(frozen=True)
class Call:
    """One HTTP request to the fake (``params`` parsed from query string and body)."""

    method: str
    path: str
    params: JSON
    status: int
    at: float
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Delivery:
    """One webhook POST made by ``deliver``/``adeliver``."""

    event_id: str
    type: str
    url: str
    status: int


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALNUM) for _ in range(length))


def parse_form(pairs: list[tuple[str, str]]) -> JSON:
    """``a[b][0][c]=v`` pairs -> nested dicts; dicts keyed exactly 0..n-1 become lists."""
    root: JSON = {}
    for key, value in pairs:
        match = _KEY_RE.fullmatch(key)
        parts = [match[1], *re.findall(r"\[([^\[\]]*)\]", match[2])] if match else [key]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part or str(len(node)), {})
            if not isinstance(node, dict):
                raise _bad(f"Invalid hash: {key}", key)
        node[parts[-1] or str(len(node))] = value
    return {k: _listify(v) for k, v in root.items()}


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    value = {k: _listify(v) for k, v in value.items()}
    if value and set(value) == {str(i) for i in range(len(value))}:
        return [value[str(i)] for i in range(len(value))]
    return value


def _need(p: Any, key: str, param: str) -> Any:
    value = p.get(key) if isinstance(p, dict) else None
    if value is None or value == "":
        raise _bad(f"Missing required param: {param}.", param)
    return value


def _int(value: Any, param: str) -> int:
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value)):
        return int(value)
    raise _bad(f"Invalid integer: {value}", param)


def _metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise _bad("Invalid object", param)
    if len(value) > 50 or any(len(k) > 40 or len(str(v)) > 500 for k, v in value.items()):
        raise _bad("Metadata: at most 50 keys of 40 characters, values of 500", param)
    return {str(k): str(v) for k, v in value.items()}


def _unknown(p: JSON, allowed: set[str]) -> None:
    for key in p:
        if key not in allowed:
            raise _bad(f"Received unknown parameter: {key}", key)


def _kind(obj: Any) -> Any:
    return obj.get("object") if isinstance(obj, dict) else None


def _list(data: list[JSON], url: str) -> JSON:
    return {"object": "list", "data": data, "has_more": False, "total_count": len(data), "url": url}


class FakeStripe(FakeServer):
    """The fake API server. Every public method is thread-safe."""

    def __init__(
        self,
        api_key: str = "sk_test_fake",
        *,
        host: str = "127.0.0.1",
        api_version: str = stripe.api_version,
        legacy_fields: bool = False,
    ) -> None:
        self.api_key, self.api_version, self.legacy_fields = api_key, api_version, legacy_fields
        super().__init__(host)
        self._lock = threading.RLock()
        self._objects: dict[str, JSON] = {}  # every object by id, in creation order
        self._lines: dict[str, list[JSON]] = {}  # checkout session -> its line items
        self._extra: dict[str, JSON] = {}  # checkout session -> subscription/payment metadata
        self._charge_of: dict[str, str] = {}  # completed checkout session or invoice -> charge
        self._events: list[JSON] = []
        self._calls: list[Call] = []
        self._deliveries: list[Delivery] = []
        self._idem: dict[str, tuple[Any, int, JSON]] = {}
        self._faults: list[tuple[str, str, int]] = []
        self._request: JSON = {"id": None, "idempotency_key": None}
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., JSON]]] = [
            ("POST", re.compile(r"/v1/checkout/sessions"), self._create_session),
            ("POST", re.compile(r"/v1/checkout/sessions/([^/]+)/expire"), self._expire_session),
            ("GET", re.compile(r"/v1/(" + "|".join(_KINDS) + r")/([^/]+)"), self._retrieve),
            ("POST", re.compile(r"/v1/subscriptions/([^/]+)"), self._update_subscription),
            ("DELETE", re.compile(r"/v1/subscriptions/([^/]+)"), self._delete_subscription),
        ]

    # -- HTTP -------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        at, body = time.time(), (await request.read()).decode("utf-8", "replace")
        method, path, key = request.method, request.path, request.headers.get("Idempotency-Key")
        pairs = parse_qsl(request.query_string, keep_blank_values=True)
        pairs += parse_qsl(body, keep_blank_values=True)
        request_id, replayed, params = new_id("req", 14), False, {}
        with self._lock:
            try:
                params = parse_form(pairs)
                self._auth(request.headers.get("Authorization", ""))
                stored = self._idem.get(key) if key and method == "POST" else None
                if stored and stored[0] != (path, params):
                    raise StripeError(400, _IDEM_MISMATCH.format(key=key), type="idempotency_error")
                if stored:
                    status, payload, replayed = stored[1], copy.deepcopy(stored[2]), True
                else:
                    self._request = {"id": request_id, "idempotency_key": key}
                    status, payload = 200, self._dispatch(method, path, params)
            except StripeError as exc:
                status, payload = exc.status, exc.body()
            except Exception as exc:  # a bug in the fake: answer like Stripe's 500s
                status, payload = 500, StripeError(500, f"FakeStripe failed: {exc!r}").body()
            finally:
                self._request = {"id": None, "idempotency_key": None}
            if key and method == "POST" and not replayed and status < 500 and status != 401:
                self._idem[key] = ((path, params), status, copy.deepcopy(payload))
            self._calls.append(Call(method, path, copy.deepcopy(params), status, at, key))
        headers = {"Request-Id": request_id, "Stripe-Version": self.api_version}
        headers |= {"Idempotent-Replayed": "true"} if replayed else {}
        return web.json_response(payload, status=status, headers=headers)

    def _auth(self, header: str) -> None:
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not given:
            raise StripeError(401, "You did not provide an API key.")
        if given != self.api_key:
            raise StripeError(401, f"Invalid API Key provided: {given[:8]}****{given[-4:]}")

    def _dispatch(self, method: str, path: str, params: JSON) -> JSON:
        for i, (fault_method, prefix, status) in enumerate(self._faults):
            if fault_method in (method, "*") and path.startswith(prefix):
                del self._faults[i]
                raise StripeError(status, f"Injected failure ({status})")
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                result = copy.deepcopy(handler(params, *match.groups()))
                return self._expand(result, params.get("expand"))
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    def _expand(self, obj: JSON, expand: Any) -> JSON:
        paths = expand if isinstance(expand, list) else [] if expand is None else [expand]
        for i, path in enumerate(paths):
            node: Any = obj
            for part in str(path).split("."):
                if part == "line_items" and _kind(node) == "checkout.session":
                    url = f"/v1/checkout/sessions/{node['id']}/line_items"
                    node[part] = _list(copy.deepcopy(self._lines[node["id"]]), url)
                elif not isinstance(node, dict) or part not in node:
                    raise _bad(f"This property cannot be expanded ({path}).", f"expand[{i}]")
                elif isinstance(node[part], str) and node[part] in self._objects:
                    node[part] = copy.deepcopy(self._objects[node[part]])
                node = node[part]
        return obj

    def _get(self, object_id: str, kind: str, param: str = "id") -> JSON:
        obj = self._objects.get(object_id)
        if obj is None or obj["object"] != kind:
            status = 404 if param == "id" else 400
            raise StripeError(status, f"No such {kind}: '{object_id}'", param, "resource_missing")
        return obj

    def _new(self, prefix: str, kind: str, length: int = 24, **fields: Any) -> JSON:
        """Create and store an object with Stripe's common fields."""
        obj: JSON = {"id": new_id(prefix, length), "object": kind, "created": int(time.time())}
        obj |= {"livemode": False, "metadata": {}} | fields
        self._objects[obj["id"]] = obj
        return obj

    def _emit(self, type: str, obj: JSON, previous: JSON | None = None) -> JSON:
        data: JSON = {"object": copy.deepcopy(obj)}
        data |= {"previous_attributes": previous} if previous else {}
        event = self._new("evt", "event", api_version=self.api_version, data=data, type=type)
        del event["metadata"]
        event |= {"pending_webhooks": 1, "request": dict(self._request)}
        self._events.append(event)
        return copy.deepcopy(event)

    # -- API handlers (lock held) -----------------------------------------------------------
    def _retrieve(self, p: JSON, collection: str, object_id: str) -> JSON:
        _unknown(p, {"expand"})
        return self._get(object_id, _KINDS[collection])

    def _price(self, pd: JSON, p: str) -> JSON:
        currency = str(_need(pd, "currency", f"{p}[currency]")).lower()
        amount = _int(_need(pd, "unit_amount", f"{p}[unit_amount]"), f"{p}[unit_amount]")
        if pd.get("product"):
            product = self._get(str(pd["product"]), "product", f"{p}[product]")["id"]
        else:
            name = _need(pd.get("product_data"), "name", f"{p}[product_data][name]")
            product = self._new("prod", "product", 14, name=name, active=True)["id"]
        recurring = pd.get("recurring")
        if recurring is not None:
            interval = _need(recurring, "interval", f"{p}[recurring][interval]")
            if interval not in ("day", "week", "month", "year"):
                raise _bad(f"Invalid interval: {interval}", f"{p}[recurring][interval]")
            recurring = {"interval": interval, "interval_count": 1, "usage_type": "licensed"}
        kind = "recurring" if recurring else "one_time"
        fields: JSON = {"currency": currency, "product": product, "unit_amount": amount}
        return self._new("price", "price", active=True, recurring=recurring, type=kind, **fields)

    def _line(self, i: int, item: Any) -> JSON:
        p = f"line_items[{i}]"
        quantity = _int(_need(item, "quantity", f"{p}[quantity]"), f"{p}[quantity]")
        if item.get("price"):
            price = self._get(str(item["price"]), "price", f"{p}[price]")
        elif isinstance(item.get("price_data"), dict):
            price = self._price(item["price_data"], f"{p}[price_data]")
        else:
            raise _bad("You must specify either `price` or `price_data` for each line item.", p)
        amount, name = price["unit_amount"] * quantity, self._objects[price["product"]]["name"]
        line = {"id": new_id("li"), "object": "item", "amount_subtotal": amount}
        line |= {"amount_total": amount, "currency": price["currency"], "description": name}
        return line | {"price": copy.deepcopy(price), "quantity": quantity}

    def _create_session(self, p: JSON) -> JSON:
        _unknown(p, _SESSION_PARAMS)
        mode = _need(p, "mode", "mode")
        if mode not in ("payment", "subscription"):
            raise _bad(f"Invalid mode: {mode} (the fake has payment, subscription)", "mode")
        items = _need(p, "line_items", "line_items")
        if not isinstance(items, list):
            raise _bad("Invalid array", "line_items")
        lines = [self._line(i, item) for i, item in enumerate(items)]
        recurring = any(line["price"]["recurring"] for line in lines)
        if mode == "subscription" and not recurring:
            raise _bad(_NO_RECURRING, "line_items")
        if mode == "payment" and recurring:
            raise _bad(_RECURRING_IN_PAYMENT, "line_items")
        for key, other in (
            ("subscription_data", "subscription"),
            ("payment_intent_data", "payment"),
        ):
            if key in p and mode != other:
                raise _bad(f"You can not pass `{key}` in `{mode}` mode.", key)
        if p.get("customer"):
            self._get(str(p["customer"]), "customer", "customer")
        if len(str(p.get("client_reference_id") or "")) > 200:
            raise _bad("client_reference_id: at most 200 characters", "client_reference_id")
        sub_meta = (p.get("subscription_data") or {}).get("metadata")
        pay_meta = (p.get("payment_intent_data") or {}).get("metadata")
        extra: JSON = {"subscription": _metadata(sub_meta, "subscription_data[metadata]")}
        extra["payment"] = _metadata(pay_meta, "payment_intent_data[metadata]")
        extra["always"] = p.get("customer_creation") == "always"
        total, now = sum(line["amount_total"] for line in lines), int(time.time())
        session = self._new("cs_test", "checkout.session", 58, mode=mode, metadata={})
        session |= {"metadata": _metadata(p.get("metadata")), "currency": lines[0]["currency"]}
        session |= dict.fromkeys(["customer_details", "invoice", "payment_intent", "subscription"])
        session |= {k: p.get(k) for k in _ECHOED}
        session |= {"amount_subtotal": total, "amount_total": total, "ui_mode": "hosted"}
        session |= {"payment_method_types": ["card"], "payment_status": "unpaid", "status": "open"}
        session["expires_at"] = _int(p.get("expires_at", now + DAY), "expires_at")
        session["url"] = f"{self.base_url}/pay/{session['id']}"
        self._lines[session["id"]], self._extra[session["id"]] = lines, extra
        return session

    def _expire_session(self, p: JSON, session_id: str) -> JSON:
        _unknown(p, {"expand"})
        session = self._get(session_id, "checkout.session", "session")
        if session["status"] != "open":
            raise _bad('Only Checkout Sessions with a status in ["open"] can be expired.')
        session.update(status="expired", url=None)
        self._emit("checkout.session.expired", session)
        return session

    def _update_subscription(self, p: JSON, sub_id: str) -> JSON:
        _unknown(p, _SUB_UPDATE_PARAMS)
        sub = self._get(sub_id, "subscription", "subscription_exposed_id")
        if todo := sorted(set(p) - _SUB_UPDATE_DONE):
            raise _bad(f"FakeStripe does not simulate updating a subscription's {todo[0]}", todo[0])
        if sub["status"] == "canceled" and set(p) - {"metadata", "cancellation_details", "expand"}:
            raise _bad(_CANCELED_UPDATE)
        previous: JSON = {}
        if "metadata" in p:
            previous["metadata"] = dict(sub["metadata"])
            if p["metadata"] == "":
                sub["metadata"].clear()
            for key, value in _metadata(p["metadata"]).items():
                if value == "":
                    sub["metadata"].pop(key, None)
                else:
                    sub["metadata"][key] = value
        if "cancel_at_period_end" in p:
            flag = str(p["cancel_at_period_end"]).lower()
            if flag not in ("true", "false"):
                raise _bad(f"Invalid boolean: {flag}", "cancel_at_period_end")
            previous |= {k: sub[k] for k in ("cancel_at_period_end", "cancel_at")}
            end, on = sub["items"]["data"][0]["current_period_end"], flag == "true"
            sub.update(cancel_at_period_end=on, cancel_at=end if on else None)
        if "description" in p:
            previous["description"] = sub["description"]
            sub["description"] = p["description"] or None
        if isinstance(p.get("cancellation_details"), dict):
            previous["cancellation_details"] = dict(sub["cancellation_details"])
            sub["cancellation_details"].update(p["cancellation_details"])
        if previous:
            self._emit("customer.subscription.updated", sub, previous)
        return sub

    def _delete_subscription(self, p: JSON, sub_id: str) -> JSON:
        _unknown(p, _SUB_CANCEL_PARAMS)
        sub = self._get(sub_id, "subscription", "subscription_exposed_id")
        if sub["status"] == "canceled":
            raise _bad(f"This subscription is already canceled: {sub_id}")
        self._end(sub, "cancellation_requested")
        return sub

    # -- lifecycle pieces (lock held) -------------------------------------------------------
    def _customer(self, email: str | None, name: str | None, metadata: JSON | None) -> JSON:
        customer = self._new("cus", "customer", 14, email=email, name=name)
        customer["metadata"] = dict(metadata or {})
        self._emit("customer.created", customer)
        return customer

    def _pay(self, amount: int, currency: str, customer: str | None, meta: JSON) -> tuple[str, str]:
        """A succeeded PaymentIntent and its Charge (which copies the intent's metadata)."""
        common: JSON = {"amount": amount, "currency": currency, "customer": customer}
        pi = self._new("pi", "payment_intent", **common, amount_received=amount)
        charge = self._new("ch", "charge", **common, payment_intent=pi["id"], status="succeeded")
        pi |= {"latest_charge": charge["id"], "status": "succeeded", "metadata": dict(meta)}
        charge |= {"amount_captured": amount, "amount_refunded": 0, "captured": True}
        charge |= {"disputed": False, "paid": True, "refunded": False, "metadata": dict(meta)}
        return pi["id"], charge["id"]

    def _set_period(self, sub: JSON, start: int) -> JSON:
        first = sub["items"]["data"][0]
        previous = {k: first[k] for k in ("current_period_start", "current_period_end")}
        for item in sub["items"]["data"]:
            item.update(current_period_start=start, current_period_end=start + PERIOD)
        if self.legacy_fields:
            sub.update(current_period_start=start, current_period_end=start + PERIOD)
        return {"items": {"data": [previous]}}

    def _invoice(self, sub: JSON, reason: str, *, paid: bool) -> JSON:
        now, lines = int(time.time()), []
        for item in sub["items"]["data"]:
            price, amount = item["price"], item["price"]["unit_amount"] * item["quantity"]
            name, quantity = self._objects[price["product"]]["name"], item["quantity"]
            details = {"subscription": sub["id"], "subscription_item": item["id"]}
            line = {"id": new_id("il"), "object": "line_item", "amount": amount}
            line |= {"currency": sub["currency"], "description": f"{quantity} x {name}"}
            line |= {"metadata": dict(sub["metadata"]), "quantity": quantity}
            line["parent"] = {
                "type": "subscription_item_details",
                "subscription_item_details": details | {"proration": False},
            }
            line["period"] = {
                "start": item["current_period_start"],
                "end": item["current_period_end"],
            }
            line["pricing"] = {
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]},
            }
            lines.append(line)
        total = sum(line["amount"] for line in lines)
        inv = self._new("in", "invoice", currency=sub["currency"], customer=sub["customer"])
        inv |= {"amount_due": total, "amount_paid": 0, "amount_remaining": total, "total": total}
        inv |= {"attempt_count": 1, "attempted": True, "billing_reason": reason, "subtotal": total}
        inv |= {"collection_method": "charge_automatically", "period_start": now, "period_end": now}
        inv |= {"status": "open", "next_payment_attempt": now + 3 * DAY}
        inv["status_transitions"] = {"finalized_at": now, "paid_at": None}
        inv["hosted_invoice_url"] = f"{self.base_url}/invoice/{inv['id']}"
        inv["lines"] = _list(lines, f"/v1/invoices/{inv['id']}/lines")
        inv["parent"] = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"]},
        }
        if self.legacy_fields:
            inv |= {"subscription": sub["id"], "paid": False, "charge": None}
            inv |= {
                "payment_intent": None,
                "subscription_details": {"metadata": dict(sub["metadata"])},
            }
        sub["latest_invoice"] = inv["id"]
        if paid:
            self._settle(inv)
        return inv

    def _settle(self, inv: JSON) -> None:
        pi_id, ch_id = self._pay(inv["amount_due"], inv["currency"], inv["customer"], {})
        inv.update(amount_paid=inv["amount_due"], amount_remaining=0, status="paid")
        inv["next_payment_attempt"], self._charge_of[inv["id"]] = None, ch_id
        inv["status_transitions"]["paid_at"] = int(time.time())
        if self.legacy_fields:
            inv.update(paid=True, charge=ch_id, payment_intent=pi_id)

    def _end(self, sub: JSON, reason: str) -> JSON:
        now, previous = int(time.time()), {"status": sub["status"]}
        sub.update(status="canceled", canceled_at=now, ended_at=now)
        sub["cancellation_details"]["reason"] = reason
        return self._emit("customer.subscription.deleted", sub, previous)

    def _live_sub(self, sub_id: str) -> JSON:
        sub = self._get(sub_id, "subscription")
        if sub["status"] == "canceled":
            raise ValueError(f"subscription {sub_id} is canceled")
        return sub

    # -- the customer's and Stripe's side ---------------------------------------------------
    def add_price(
        self,
        unit_amount: int,
        currency: str = "usd",
        *,
        interval: str | None = None,
        product_name: str = "Bot hosting",
    ) -> str:
        """Register a Price (recurring when ``interval`` is given); returns its id."""
        pd: JSON = {"currency": currency, "unit_amount": unit_amount}
        pd |= {"product_data": {"name": product_name}}
        pd |= {"recurring": {"interval": interval}} if interval else {}
        with self._lock:
            return str(self._price(pd, "price")["id"])

    def add_customer(
        self, email: str | None = None, *, name: str | None = None, metadata: JSON | None = None
    ) -> JSON:
        """Create a Customer (as if by the API); returns it."""
        with self._lock:
            return copy.deepcopy(self._customer(email, name, metadata))

    def complete_checkout(
        self, session_id: str, *, email: str = "buyer@example.com", name: str = "Test Buyer"
    ) -> JSON:
        """The customer pays: returns ``checkout.session.completed``.

        Stored before it, in order: ``customer.created`` when a Customer is made (always in
        subscription mode unless the session named one; in payment mode only with
        ``customer_creation=always``, else ``customer`` stays null as in Stripe), then in
        subscription mode ``customer.subscription.created``, ``invoice.paid`` and
        ``invoice.payment_succeeded`` for the first invoice (``billing_reason``
        "subscription_create"): read them with ``events_of``. Payment mode makes a
        PaymentIntent and Charge carrying ``payment_intent_data[metadata]``.
        """
        with self._lock:
            session = self._get(session_id, "checkout.session")
            if session["status"] != "open":
                raise ValueError(f"checkout session {session_id} is {session['status']}")
            extra, lines = self._extra[session_id], self._lines[session_id]
            customer = session["customer"]
            if not customer and (session["mode"] == "subscription" or extra["always"]):
                customer = self._customer(email, name, None)["id"]
            if session["mode"] == "payment":
                amount, currency = session["amount_total"], session["currency"]
                pi_id, ch_id = self._pay(amount, currency, customer, extra["payment"])
                session["payment_intent"], self._charge_of[session_id] = pi_id, ch_id
            else:
                sub = self._new("sub", "subscription", customer=customer, status="active")
                sub |= {"metadata": dict(extra["subscription"]), "currency": session["currency"]}
                sub |= {"billing_cycle_anchor": sub["created"], "start_date": sub["created"]}
                sub |= {"cancel_at_period_end": False, "collection_method": "charge_automatically"}
                sub |= dict.fromkeys(["cancel_at", "canceled_at", "description", "ended_at"])
                sub["cancellation_details"] = dict.fromkeys(["comment", "feedback", "reason"])
                items = [
                    {"id": new_id("si", 14), "object": "subscription_item", "metadata": {}}
                    | {"created": sub["created"], "subscription": sub["id"]}
                    | {"price": copy.deepcopy(line["price"]), "quantity": line["quantity"]}
                    | {"current_period_start": 0, "current_period_end": 0}
                    for line in lines
                    if line["price"]["recurring"]
                ]
                sub["items"] = _list(items, f"/v1/subscription_items?subscription={sub['id']}")
                self._set_period(sub, sub["created"])
                inv = self._invoice(sub, "subscription_create", paid=True)
                self._emit("customer.subscription.created", sub)
                self._emit("invoice.paid", inv)
                self._emit("invoice.payment_succeeded", inv)
                session.update(subscription=sub["id"], invoice=inv["id"])
                self._charge_of[session_id] = self._charge_of[inv["id"]]
            session.update(status="complete", payment_status="paid", customer=customer)
            session["customer_details"] = {"email": email, "name": name}
            return self._emit("checkout.session.completed", session)

    def expire_checkout(self, session_id: str) -> JSON:
        """Stripe expires an open session (e.g. after 24 h): ``checkout.session.expired``."""
        with self._lock:
            self._expire_session({}, session_id)
            return copy.deepcopy(self._events[-1])

    def renew(self, subscription_id: str) -> JSON:
        """A billing period ends and is paid: returns ``invoice.paid`` (subscription_cycle).

        The period advances 30 days (``customer.subscription.updated`` and
        ``invoice.payment_succeeded`` are stored too). After ``fail_payment`` this pays the
        open invoice instead (a successful retry), without advancing again. With
        ``cancel_at_period_end`` the subscription ends: ``customer.subscription.deleted``.
        """
        with self._lock:
            sub = self._live_sub(subscription_id)
            if sub["cancel_at_period_end"]:
                return self._end(sub, "cancellation_requested")
            inv = self._objects[sub["latest_invoice"]]
            previous: JSON = {"status": sub["status"]} if sub["status"] != "active" else {}
            if inv["status"] == "open":
                inv["attempt_count"] += 1
                self._settle(inv)
            else:
                previous |= self._set_period(sub, sub["items"]["data"][0]["current_period_end"])
                inv = self._invoice(sub, "subscription_cycle", paid=True)
            sub["status"] = "active"
            self._emit("customer.subscription.updated", sub, previous)
            event = self._emit("invoice.paid", inv)
            self._emit("invoice.payment_succeeded", inv)
            return event

    def fail_payment(self, subscription_id: str) -> JSON:
        """A renewal charge fails: returns ``invoice.payment_failed`` (the invoice stays open).

        The first failure advances the period and opens a new invoice; later ones count as
        retries (``attempt_count`` + 1). The subscription becomes ``past_due``
        (``customer.subscription.updated`` is stored when anything changed).
        """
        with self._lock:
            sub = self._live_sub(subscription_id)
            if sub["cancel_at_period_end"]:
                raise ValueError(f"{subscription_id} ends at period end: renew() ends it")
            inv = self._objects[sub["latest_invoice"]]
            previous: JSON = {"status": sub["status"]} if sub["status"] != "past_due" else {}
            if inv["status"] == "open":
                inv["attempt_count"] += 1
            else:
                previous |= self._set_period(sub, sub["items"]["data"][0]["current_period_end"])
                inv = self._invoice(sub, "subscription_cycle", paid=False)
            sub["status"] = "past_due"
            if previous:
                self._emit("customer.subscription.updated", sub, previous)
            return self._emit("invoice.payment_failed", inv)

    def cancel(self, subscription_id: str, *, reason: str = "payment_failed") -> JSON:
        """Stripe ends the subscription (dunning gave up): ``customer.subscription.deleted``."""
        with self._lock:
            return self._end(self._live_sub(subscription_id), reason)

    def _session_charge(self, session_id: str) -> JSON:
        if session_id not in self._charge_of:
            raise ValueError(f"checkout session {session_id} was not completed")
        return self._objects[self._charge_of[session_id]]

    def refund(self, session_id: str, amount: int | None = None) -> JSON:
        """Refund (the rest or ``amount`` of) the session's first charge: ``charge.refunded``."""
        with self._lock:
            charge = self._session_charge(session_id)
            previous = {k: charge[k] for k in ("amount_refunded", "refunded")}
            total = charge["amount_refunded"] + (
                amount or charge["amount"] - charge["amount_refunded"]
            )
            charge.update(amount_refunded=total, refunded=total >= charge["amount"])
            return self._emit("charge.refunded", charge, previous)

    def dispute(self, session_id: str, *, reason: str = "fraudulent") -> JSON:
        """The buyer disputes the session's first charge: returns ``charge.dispute.created``."""
        with self._lock:
            charge = self._session_charge(session_id)
            charge["disputed"] = True
            dispute = self._new("dp", "dispute", amount=charge["amount"], charge=charge["id"])
            dispute |= {"currency": charge["currency"], "payment_intent": charge["payment_intent"]}
            dispute |= {"reason": reason, "status": "needs_response", "is_charge_refundable": False}
            dispute["evidence_details"] = {"due_by": dispute["created"] + 7 * DAY}
            return self._emit("charge.dispute.created", dispute)

    def fail_next(self, method: str, path_prefix: str, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` matching API calls (``method`` "*": any) with an error."""
        with self._lock:
            self._faults.extend([(method.upper(), path_prefix, status)] * times)

    # -- webhooks ---------------------------------------------------------------------------
    def signed(
        self,
        event: JSON,
        secret: str,
        *,
        tamper: bool = False,
        sign_secret: str | None = None,
        timestamp: int | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers Stripe would POST: pretty JSON, ``Stripe-Signature`` over it.

        ``sign_secret`` signs with another secret (a forgery), ``tamper`` changes the body after
        signing, ``timestamp`` backdates the signature (stale beyond the 300 s tolerance).
        """
        payload = json.dumps(event, indent=2)
        key = secret if sign_secret is None else sign_secret
        header = stripe.WebhookSignature.generate_signature_header(payload, key, timestamp)
        if tamper:
            payload = payload.replace('"livemode": false', '"livemode": true', 1)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        headers |= {"Stripe-Signature": str(header)}
        headers |= {"User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
        return payload.encode(), headers

    def deliver(
        self,
        event: JSON,
        url: str,
        secret: str,
        *,
        tamper: bool = False,
        sign_secret: str | None = None,
        timestamp: int | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, str]:
        """POST the event to ``url`` from the calling thread; returns (status, response text)."""
        body, headers = self.signed(
            event, secret, tamper=tamper, sign_secret=sign_secret, timestamp=timestamp
        )
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
        self._delivered(event, url, response.status_code)
        return response.status_code, response.text

    async def adeliver(
        self,
        event: JSON,
        url: str,
        secret: str,
        *,
        tamper: bool = False,
        sign_secret: str | None = None,
        timestamp: int | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, str]:
        """Async ``deliver``: ``status, text = await fake.adeliver(...)``."""
        body, headers = self.signed(
            event, secret, tamper=tamper, sign_secret=sign_secret, timestamp=timestamp
        )
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(url, content=body, headers=headers)
        self._delivered(event, url, response.status_code)
        return response.status_code, response.text

    def _delivered(self, event: JSON, url: str, status: int) -> None:
        with self._lock:
            self._deliveries.append(Delivery(event["id"], event["type"], url, status))

    # -- inspection ---------------------------------------------------------------------------
    @property
    def calls(self) -> list[Call]:
        """Every API request so far, in order."""
        with self._lock:
            return list(self._calls)

    def calls_for(self, method: str, path_prefix: str = "/v1/") -> list[Call]:
        """Requests with that HTTP method (``"*"``: any) whose path starts with the prefix."""
        with self._lock:
            return [
                c
                for c in self._calls
                if method.upper() in ("*", c.method) and c.path.startswith(path_prefix)
            ]

    def _all(self, kind: str) -> dict[str, JSON]:
        with self._lock:
            return {k: copy.deepcopy(o) for k, o in self._objects.items() if o["object"] == kind}

    @property
    def sessions(self) -> dict[str, JSON]:
        """Checkout Sessions by id (copies, current state)."""
        return self._all("checkout.session")

    @property
    def subscriptions(self) -> dict[str, JSON]:
        return self._all("subscription")

    @property
    def customers(self) -> dict[str, JSON]:
        return self._all("customer")

    @property
    def invoices(self) -> dict[str, JSON]:
        return self._all("invoice")

    @property
    def charges(self) -> dict[str, JSON]:
        return self._all("charge")

    @property
    def events(self) -> list[JSON]:
        """Every Event created so far (by the API or a simulation), oldest first."""
        with self._lock:
            return copy.deepcopy(self._events)

    def events_of(self, type: str) -> list[JSON]:
        """Events of one type, oldest first."""
        return [e for e in self.events if e["type"] == type]

    def get(self, object_id: str) -> JSON:
        """Any stored object by id (KeyError when unknown)."""
        with self._lock:
            return copy.deepcopy(self._objects[object_id])

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)
