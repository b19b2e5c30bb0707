"""Every Prometheus metric, defined once, on a registry owned by whoever builds the app."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
INGEST_OUTCOMES = ("embedded", "reused", "kept", "removed")
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # serving
        self.http_latency = Histogram(
            "embedstack_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # inference
        self.batch_size = Histogram(
            "embedstack_batch_size", "Texts per model batch.", ["model"],
            buckets=SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "embedstack_batch_tokens", "Padded tokens per model batch.", ["model"],
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_latency = Histogram(
            "embedstack_inference_duration_seconds", "Model forward time per batch.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batcher_pending = Gauge(
            "embedstack_batcher_pending_texts", "Texts admitted and waiting for the model.",
            ["model", "lane"], registry=r,
        )  # fmt: skip
        self.batcher_rejected = Counter(
            "embedstack_batcher_rejected_total", "Requests shed with 429 by admission control.",
            ["model"], registry=r,
        )  # fmt: skip
        self.batcher_dropped = Counter(
            "embedstack_batcher_dropped_total",
            "Texts dropped before the model because their caller went away.",
            ["model"], registry=r,
        )  # fmt: skip
        self.embedded_texts = Counter(
            "embedstack_embedded_texts_total", "Texts embedded.", ["model", "lane"], registry=r
        )
        # latency budgets (deadline-aware admission); stage: "embed" (batcher) or "search"
        self.shed = Counter(
            "embedstack_shed_total",
            "Requests refused at admission (429), by stage and reason: budget (would miss its "
            "latency budget) or full (in-flight bound).",
            ["stage", "reason"], registry=r,
        )  # fmt: skip
        self.shed_early = Counter(
            "embedstack_shed_early_total",
            "Of embedstack_shed_total: refused by the shedding middleware before the request "
            "body was validated or routed, by route.",
            ["route"], registry=r,
        )  # fmt: skip
        self.deadline_dropped = Counter(
            "embedstack_deadline_dropped_total",
            "Admitted work dropped unrun because its deadline passed while it waited (texts for "
            "embed, searches for search).",
            ["stage"], registry=r,
        )  # fmt: skip
        self.estimated_wait = Histogram(
            "embedstack_estimated_wait_seconds",
            "Estimated wait until done, at admission of a request with a deadline.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.search_inflight = Gauge(
            "embedstack_search_inflight", "Searches running or queued for the search pool.",
            registry=r,
        )  # fmt: skip
        self.budget = Counter(
            "embedstack_query_budget_total",
            "Answered queries by outcome against their latency budget: met or missed.",
            ["outcome"], registry=r,
        )  # fmt: skip
        # index
        self.search_latency = Histogram(
            "embedstack_index_search_duration_seconds", "Index search time per query batch.",
            ["collection"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.vectors = Gauge(
            "embedstack_index_vectors", "Live vectors per index.", ["collection", "space"],
            registry=r,
        )  # fmt: skip
        self.index_memory = Gauge(
            "embedstack_index_memory_bytes", "Index memory.", ["collection", "space"], registry=r
        )
        self.tombstones = Gauge(
            "embedstack_index_tombstones", "Removed vectors awaiting compaction.",
            ["collection", "space"],
            registry=r,
        )  # fmt: skip
        self.upgrade_documents = Gauge(
            "embedstack_upgrade_documents",
            "Shadow re-index progress of the latest upgrade, documents done and total.",
            ["collection", "kind"], registry=r,
        )  # fmt: skip
        self.maintenance_errors = Counter(
            "embedstack_maintenance_errors_total",
            "Maintenance steps that failed (logged; later passes carry on), by step.",
            ["step"], registry=r,
        )  # fmt: skip
        # ingest
        self.queue_depth = Gauge(
            "embedstack_queue_jobs", "Jobs in the ingest queue by status.", ["status"], registry=r
        )
        self.ingest_chunks = Counter(
            "embedstack_ingest_chunks_total",
            "Chunks processed by ingest workers, by outcome (embedded, skipped, removed).",
            ["collection", "outcome"], registry=r,
        )  # fmt: skip
        self.ingest_overload_waits = Counter(
            "embedstack_ingest_overload_waits_total",
            "Times an ingest worker waited out an overloaded model instead of failing a job.",
            registry=r,
        )
        self.ingest_worker_errors = Counter(
            "embedstack_ingest_worker_errors_total",
            "Queue operations of ingest workers that failed and were retried, by operation.",
            ["operation"], registry=r,
        )  # fmt: skip
        self.ingest_jobs = Counter(
            "embedstack_ingest_jobs_total", "Ingest jobs finished by outcome.", ["outcome"],
            registry=r,
        )  # fmt: skip

    def forget_space(self, collection: str, space: str) -> None:
        """Drop the per-index label sets of a space whose index was dropped (retired)."""
        for metric in (self.vectors, self.index_memory, self.tombstones):
            with contextlib.suppress(KeyError):
                metric.remove(collection, space)

    def forget_collection(self, collection: str, spaces: list[str]) -> None:
        """Drop every label set of a deleted collection, so its series stop being exported."""
        labelled: list[tuple[Any, list[tuple[str, ...]]]] = [
            (self.vectors, [(collection, s) for s in spaces]),
            (self.index_memory, [(collection, s) for s in spaces]),
            (self.tombstones, [(collection, s) for s in spaces]),
            (self.search_latency, [(collection,)]),
            (self.upgrade_documents, [(collection, k) for k in ("done", "total")]),
            (self.ingest_chunks, [(collection, o) for o in INGEST_OUTCOMES]),
        ]
        for metric, label_sets in labelled:
            for labels in label_sets:
                with contextlib.suppress(KeyError):
                    metric.remove(*labels)
