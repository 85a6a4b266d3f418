"""The one adapter to Stripe: Checkout Sessions out, signed webhook events in.

The API base is STRIPE_API_BASE, so tests run this exact code against an HTTP fake.
A payment is tied to its order by `metadata.order_id` and to its customer by
`client_reference_id` (their Telegram id), never by amount or e-mail.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import stripe

from storebot.errors import StorebotError
from storebot.plans import Plan


class PaymentsUnavailable(StorebotError):
    """Stripe did not answer or refused: nothing was charged."""


class BadWebhook(StorebotError):
    """A webhook without a valid signature (forged, tampered or stale)."""


@dataclass(frozen=True)
class CheckoutLink:
    session_id: str
    url: str


class StripeGateway:
    def __init__(self, secret_key: str, webhook_secret: str, api_base: str, currency: str) -> None:
        self._webhook_secret = webhook_secret
        self._currency = currency
        # aiohttp, not stripe's httpx client: that one posts str bodies as `data=`,
        # which httpx deprecates (a warning per request).
        self._http = stripe.AIOHTTPClient()
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base},
            http_client=self._http,
            max_network_retries=2,
        )

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def hosting_checkout(
        self,
        *,
        order_id: str,
        telegram_id: int,
        plan: Plan,
        success_url: str,
        cancel_url: str,
    ) -> CheckoutLink:
        """A Checkout Session for the monthly hosting subscription of one order."""
        tags = {"order_id": order_id, "telegram_id": str(telegram_id), "kind": "hosting"}
        params: dict[str, Any] = {
            "mode": "subscription",
            "client_reference_id": str(telegram_id),
            "metadata": tags,
            "subscription_data": {"metadata": tags},
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": self._currency,
                        "unit_amount": plan.price_cents,
                        "recurring": {"interval": "month"},
                        "product_data": {"name": f"{plan.title} assistant hosting"},
                    },
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        return await self._checkout(params)

    async def topup_checkout(
        self,
        *,
        bot_id: str,
        telegram_id: int,
        cents: int,
        success_url: str,
        cancel_url: str,
    ) -> CheckoutLink:
        """A one-off Checkout Session for LLM credit of one bot. Always in USD: the
        ledger counts micro-USD, whatever currency hosting is sold in."""
        tags = {"kind": "topup", "bot_id": bot_id, "telegram_id": str(telegram_id)}
        params: dict[str, Any] = {
            "mode": "payment",
            "client_reference_id": str(telegram_id),
            "metadata": tags,
            "payment_intent_data": {"metadata": tags},
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": cents,
                        "product_data": {"name": f"LLM credit for assistant {bot_id}"},
                    },
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        return await self._checkout(params)

    async def _checkout(self, params: dict[str, Any]) -> CheckoutLink:
        try:
            session = await self._client.v1.checkout.sessions.create_async(params=params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            raise PaymentsUnavailable(
                f"payments are unavailable right now ({type(exc).__name__}); "
                "nothing was charged, try again in a minute"
            ) from None
        return CheckoutLink(session_id=session.id, url=str(session.url))

    async def expire_checkout(self, session_id: str) -> None:
        """Close an open Checkout page so it cannot be paid any more (best effort:
        an already completed or expired session is fine as it is)."""
        with contextlib.suppress(stripe.StripeError):
            await self._client.v1.checkout.sessions.expire_async(session_id)

    async def cancel_subscription(self, subscription_id: str) -> None:
        """End a hosting subscription now (no further invoices); idempotent."""
        try:
            current = await self._client.v1.subscriptions.retrieve_async(subscription_id)
            if current.status in ("canceled", "incomplete_expired"):
                return
            await self._client.v1.subscriptions.cancel_async(subscription_id)
        except stripe.InvalidRequestError as exc:
            if getattr(exc, "code", None) != "resource_missing":  # gone is as good as ended
                raise PaymentsUnavailable(f"Stripe refused to cancel: {exc.user_message}") from None
        except stripe.StripeError as exc:
            raise PaymentsUnavailable(
                f"could not cancel the subscription ({type(exc).__name__}); try again later"
            ) from None

    def parse_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The event, if the Stripe-Signature header matches the raw body."""
        if not signature:
            raise BadWebhook("missing Stripe-Signature header")
        try:
            stripe.WebhookSignature.verify_header(
                payload.decode("utf-8"), signature, self._webhook_secret, tolerance=300
            )
            event = json.loads(payload)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
            raise BadWebhook(f"invalid webhook: {exc}") from None
        if not isinstance(event, dict) or not isinstance(event.get("id"), str):
            raise BadWebhook("invalid webhook: not a Stripe event")
        return event
