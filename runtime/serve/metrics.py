"""The service's Prometheus metrics, in a registry of its own (two apps in one process never share counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """``longclip_requests_total{route,status}``, ``longclip_items_total{route}``, ``longclip_batch_size``
    (items per model batch), ``longclip_queue_depth`` (items waiting), ``longclip_request_seconds{route}``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("longclip_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.items = Counter("longclip_items", "Items (images, texts, pairs) received by route", ["route"],
                             registry=self.registry)
        self.batch_size = Histogram("longclip_batch_size", "Items per batch the model worker ran",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("longclip_queue_depth", "Items waiting for the model worker",
                                 registry=self.registry)
        self.latency = Histogram("longclip_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
