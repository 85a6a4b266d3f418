"""The meter's Prometheus metrics, per bot, on its own registry (GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class MeterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "storebot_meter_requests",
            "LLM calls by outcome: forwarded, empty_balance, refused, bad_request, upstream_error",
            ["bot", "outcome"],
            registry=r,
        )
        self.refusals = Counter(
            "storebot_meter_refusals",
            "Calls not forwarded, by reason: unknown_token, suspended, empty_balance",
            ["bot", "reason"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "storebot_meter_upstream_seconds",
            "Time upstream took to answer a forwarded call (whole stream included)",
            ["bot"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.debited = Counter(
            "storebot_meter_debited_micro_usd",
            "Usage charged to each bot's balance, in micro-USD",
            ["bot"],
            registry=r,
        )
        self.uncosted = Counter(
            "storebot_meter_uncosted",
            "Successful answers without usage.cost (charged LLM_UNKNOWN_COST_MICRO)",
            ["bot"],
            registry=r,
        )
        self.unwritten = Gauge(
            "storebot_meter_unwritten_debits",
            "Debits taken but not yet written to the ledger",
            registry=r,
        )
        self.sync_failures = Counter(
            "storebot_meter_sync_failures",
            "Syncs with the database that failed (debits are kept and retried)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
