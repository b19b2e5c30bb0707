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
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
# stages of embedstack_stage_seconds: admission_wait (search pool queue), tokenize, batch_wait
# (admitted text until its batch starts), forward (model), filter (metadata filter), search
# (index), hydrate (store rows)
STAGES = ("admission_wait", "tokenize", "batch_wait", "forward", "filter", "search", "hydrate")
DRIFT_SIGNALS = ("top1_score", "centroid_cosine", "norm")


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
        # one histogram for every stage of every route (STAGES); route is the HTTP route
        # ("query") for index stages and the batcher lane ("query", "bulk") for model stages
        self.stage_seconds = Histogram(
            "embedstack_stage_seconds", "Time spent per pipeline stage, by stage and route.",
            ["stage", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # inference
        self.batch_size = Histogram(
            "embedstack_batch_size", "Texts per model batch.", ["model"],
            buckets=SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "embedstack_batch_tokens", "Padded tokens per model batch.", ["model"],
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_padding = Histogram(
            "embedstack_batch_padding_ratio",
            "Share of a batch's padded tokens that are padding (1 - real / padded).",
            ["model"], buckets=RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_fill = Histogram(
            "embedstack_batch_token_fill_ratio",
            "Padded tokens of a batch over the batch token budget (max_batch_tokens).",
            ["model"], buckets=RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.batcher_oldest = Gauge(
            "embedstack_batcher_oldest_wait_seconds",
            "Age of the oldest text waiting for the model, per lane (0 when none waits).",
            ["model", "lane"], registry=r,
        )  # fmt: skip
        self.model_engine = Gauge(
            "embedstack_model_engine_info",
            "The engine serving each loaded model (value 1; the backend is a label).",
            ["model", "backend"], registry=r,
        )  # fmt: skip
        self.model_selection = Gauge(
            "embedstack_model_selection_info",
            "Where an auto model's choice of engine stands (value 1; the state is a label: "
            "deferred until texts reach the model, running while gated and raced, cached, "
            "chosen, pinned, stopped or failed).",
            ["model", "state"], registry=r,
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
        self.query_concurrency_limit = Gauge(
            "embedstack_query_concurrency_limit",
            "The adaptive bound on admitted queries in flight, by the model their text goes to "
            "(\"\" for queries that skip the model).",
            ["model"], registry=r,
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
        self.queue_oldest = Gauge(
            "embedstack_queue_oldest_job_age_seconds",
            "Age of the oldest job per ingest queue and status (queued, leased); 0 when none.",
            ["queue", "status"], registry=r,
        )  # fmt: skip
        self.dead_letters = Gauge(
            "embedstack_queue_dead_letters", "Dead-lettered jobs per ingest queue.", ["queue"],
            registry=r,
        )  # fmt: skip
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
        # quality (obs/drift.py, obs/recall.py, obs/feedback.py; computed off the hot path)
        space = ["collection", "space"]
        self.drift_psi = Gauge(
            "embedstack_drift_psi",
            "Population stability index of a query signal: rolling window vs baseline.",
            [*space, "signal"], registry=r,
        )  # fmt: skip
        self.drift_ks = Gauge(
            "embedstack_drift_ks", "Two-sample KS statistic of a query signal: window vs baseline.",
            [*space, "signal"], registry=r,
        )  # fmt: skip
        self.drift_alert = Gauge(
            "embedstack_drift_alert", "1 while the query distribution of a space has drifted.",
            space, registry=r,
        )  # fmt: skip
        self.online_recall = Gauge(
            "embedstack_online_recall",
            "Recall@k of the live index on sampled live queries, against exact search.",
            space, registry=r,
        )  # fmt: skip
        self.online_recall_low = Gauge(
            "embedstack_online_recall_low", "Lower bound (95% bootstrap) of the online recall.",
            space, registry=r,
        )  # fmt: skip
        self.online_recall_high = Gauge(
            "embedstack_online_recall_high", "Upper bound (95% bootstrap) of the online recall.",
            space, registry=r,
        )  # fmt: skip
        self.recall_floor = Gauge(
            "embedstack_recall_floor", "The recall floor of a space's index.", space, registry=r
        )
        self.recall_samples = Counter(
            "embedstack_online_recall_samples_total",
            "Live queries re-run with exact search, by outcome: checked, dropped (queue full or "
            "over the rate).",
            [*space, "outcome"], registry=r,
        )  # fmt: skip
        self.retunes = Counter(
            "embedstack_recall_retunes_total",
            "Times the online recall fell under the floor and the index knobs were re-tuned on "
            "sampled live queries, by result (raised, capped).",
            [*space, "result"], registry=r,
        )  # fmt: skip
        self.click_through = Gauge(
            "embedstack_click_through",
            "Share of recent answered queries with a click (or a positive grade) in the top k.",
            space, registry=r,
        )  # fmt: skip
        self.clicked_mrr = Gauge(
            "embedstack_clicked_mrr",
            "Mean reciprocal rank of the first clicked hit, over recent queries with a click.",
            space, registry=r,
        )  # fmt: skip
        self.feedback = Counter(
            "embedstack_feedback_total", "Feedback events recorded, by kind (click, grade).",
            [*space, "kind"], registry=r,
        )  # fmt: skip
        # federation (cluster/federation.py): payload bytes a federated API node moved between
        # regions, by kind (ids, scores, text, metadata of hits; query; documents)
        self.region_bytes = Counter(
            "embedstack_region_payload_bytes",
            "Payload bytes moved from one region to another (from == to: inside a region), "
            "by kind.", ["from_region", "to_region", "kind"], registry=r,
        )  # fmt: skip

        # cluster mode, on an API node (cluster/router.py, serving/cluster_obs.py): the router's
        # calls to shard replicas, query embedding, and gauges gathered from the shard replicas
        self.shard_calls = Counter(
            "embedstack_cluster_shard_calls_total",
            "Calls of the router to a shard replica, by collection, shard and outcome: ok, error "
            "(the replica failed; retried on another) or timeout (no answer within "
            "cluster_replica_timeout_s; retried on another).",
            ["collection", "shard", "outcome"], registry=r,
        )  # fmt: skip
        self.shard_retries = Counter(
            "embedstack_cluster_shard_retries_total",
            "Shard calls sent to another replica after one failed or timed out.",
            ["collection", "shard"], registry=r,
        )  # fmt: skip
        self.scatter_seconds = Histogram(
            "embedstack_cluster_scatter_seconds",
            "Time of one scatter/gather over every shard of a collection, by replica method "
            "(its count is the number of scatters: fan-out = shard calls / scatters).",
            ["collection", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.query_embed_seconds = Histogram(
            "embedstack_cluster_query_embed_seconds",
            "Query embedding on an API node, by model, where (service: the shared inference "
            "service; local: a model in the API node) and outcome (ok, error).",
            ["model", "via", "outcome"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.query_records_failed = Counter(
            "embedstack_cluster_query_records_failed_total",
            "Answered queries whose record (for feedback and drift) the catalog did not take, "
            "e.g. during a catalog failover: the query was answered; feedback on it gets 404.",
            ["collection"], registry=r,
        )  # fmt: skip
        replica = ["collection", "shard", "node"]
        self.replica_documents = Gauge(
            "embedstack_cluster_replica_documents", "Documents stored by a shard replica.",
            replica, registry=r,
        )  # fmt: skip
        self.replica_vectors = Gauge(
            "embedstack_cluster_replica_vectors", "Live vectors of a shard replica, per space.",
            [*replica, "space"], registry=r,
        )  # fmt: skip
        self.replica_index_bytes = Gauge(
            "embedstack_cluster_replica_index_bytes",
            "Index memory of a shard replica, per space.", [*replica, "space"], registry=r,
        )  # fmt: skip
        self.replica_position = Gauge(
            "embedstack_cluster_replica_log_position",
            "The next log offset a shard replica applies (its applied position).",
            replica, registry=r,
        )  # fmt: skip
        self.replica_lag = Gauge(
            "embedstack_cluster_replica_log_lag",
            "Log records of its shard partition a replica has not applied yet.",
            replica, registry=r,
        )  # fmt: skip

    def forget_space(self, collection: str, space: str) -> None:
        """Drop the per-index label sets of a space whose index was dropped (retired)."""
        for metric in (self.vectors, self.index_memory, self.tombstones, *self._quality()):
            with contextlib.suppress(KeyError):
                metric.remove(collection, space)
        self._forget_labelled(collection, space)

    def _quality(self) -> tuple[Gauge, ...]:
        return (self.drift_alert, self.online_recall, self.online_recall_low,
                self.online_recall_high, self.recall_floor, self.click_through,
                self.clicked_mrr)  # fmt: skip

    def _forget_labelled(self, collection: str, space: str) -> None:
        """Drop the series of a space that carry a third label (signal, outcome, result, kind)."""
        for metric in (self.drift_psi, self.drift_ks, self.recall_samples, self.retunes,
                       self.feedback):  # fmt: skip
            for labels in list(metric._metrics):
                if labels[:2] == (collection, space):
                    with contextlib.suppress(KeyError):
                        metric.remove(*labels)

    def forget_collection(self, collection: str, spaces: list[str]) -> None:
        """Drop every label set of a deleted collection, so its series stop being exported."""
        for space in spaces:
            self.forget_space(collection, space)
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
