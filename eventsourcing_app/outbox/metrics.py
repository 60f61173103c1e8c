"""Prometheus metrics of the outbox: outcomes per destination, delivery latency, and what is still pending.

The counters and the histogram are updated by the processor that recorded the
outcome (so a processor that lost its lease counts nothing). The pending
gauges are read from the database when Prometheus scrapes, so they are right
whichever process serves the scrape and however many processors run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..models import OutboxMessage, OutboxStatus

logger = logging.getLogger("eventsourcing_app.outbox")

DELIVERED = Counter(
    "eventsourcing_outbox_delivered_total", "Outbox messages delivered, by destination.", ["destination"]
)
FAILED = Counter(
    "eventsourcing_outbox_failed_total",
    "Failed delivery attempts of outbox messages (each is retried or dead-lettered), by destination.",
    ["destination"],
)
DEAD_LETTERED = Counter(
    "eventsourcing_outbox_dead_lettered_total",
    "Outbox messages that used up their attempts and became dead letters, by destination.",
    ["destination"],
)
LATENCY = Histogram(
    "eventsourcing_outbox_delivery_latency_seconds",
    "Time from an outbox message's creation (its event's commit) to its delivery, by destination.",
    ["destination"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)


class PendingCollector(Collector):
    """`eventsourcing_outbox_pending` and `…_oldest_pending_age_seconds` per destination, queried per scrape."""

    def describe(self) -> Iterator[Metric]:
        # Described without a query: registration would otherwise run collect() at import.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        pending, oldest = self._families()
        try:
            rows = (
                OutboxMessage.objects.filter(status=OutboxStatus.PENDING)
                .values("destination")
                .annotate(count=Count("pk"), oldest=Min("created_at"))
                .order_by("destination")
            )
            now = timezone.now()
            for row in rows:
                pending.add_metric([row["destination"]], row["count"])
                oldest.add_metric([row["destination"]], max(0.0, (now - row["oldest"]).total_seconds()))
        except Exception as exc:  # a scrape must not fail because the database is unreachable
            logger.warning("outbox metrics: could not count pending messages: %s", exc)
        yield pending
        yield oldest

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "eventsourcing_outbox_pending",
                "Outbox messages not yet delivered, by destination.",
                labels=["destination"],
            ),
            GaugeMetricFamily(
                "eventsourcing_outbox_oldest_pending_age_seconds",
                "Age of the oldest undelivered outbox message, by destination.",
                labels=["destination"],
            ),
        )


PENDING = PendingCollector()
REGISTRY.register(PENDING)
