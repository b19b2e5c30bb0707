"""Settings: EMBEDSTACK_* env variables and an optional TOML file. Read by entry points only."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from embedstack.errors import ConfigError

ENV_PREFIX = "EMBEDSTACK_"


class RemoteModel(BaseModel):
    """A model served by an OpenAI-compatible endpoint (POST {base_url}/embeddings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="the name collections and /v1/embeddings use")
    base_url: str = Field(min_length=1, description="e.g. https://api.example.com/v1; never shown")
    model: str = Field(min_length=1, description="the model name the endpoint expects")
    dim: int | None = Field(None, ge=1, description="checked against the vectors; None: any")
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    max_tokens: int = Field(256, ge=16, description="chunk size limit (local tokenizer)")
    # the NAME of the environment variable that holds the API key (the key is never in config)
    api_key_env: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    batch_size: int = Field(64, ge=1)
    max_retries: int = Field(4, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("./data")
    default_model: str = "all-MiniLM-L6-v2"
    # models besides the bundled ones; "hashing-test" is the deterministic unit-test embedder
    enable_test_models: bool = False
    workers: int = Field(1, ge=0, le=64, description="in-process ingest workers")
    torch_threads: int = Field(0, ge=0, description="0 = torch default")
    # model -> backend that serves it in its fp32 space, instead of the auto choice, e.g.
    # EMBEDSTACK_MODEL_BACKENDS='{"all-MiniLM-L6-v2": "onnx-fp32"}'; still gated against fp32
    model_backends: dict[str, str] = Field(default_factory=dict)
    # models behind OpenAI-compatible endpoints, e.g. EMBEDSTACK_REMOTE_MODELS='[{"name": "oa",
    # "base_url": "https://api.openai.com/v1", "model": "text-embedding-3-small",
    # "api_key_env": "OPENAI_API_KEY"}]' or [[remote_models]] tables in the TOML file
    remote_models: list[RemoteModel] = Field(default_factory=list)
    # gate on the first N sample queries and their passages (faster, coarser); None: all 520
    gate_queries: int | None = Field(None, ge=1)
    # batcher
    max_batch_size: int = Field(64, ge=1)
    max_batch_tokens: int = Field(16384, ge=16)
    # 0: a batch goes as soon as the model is free, and whatever arrives meanwhile forms the next
    # one; above 0 an idle model waits that long for company (measured: text query p50 6.7 ms
    # with 2 ms, 4.8 ms with 0, on the bundled model)
    max_wait_ms: float = Field(0.0, ge=0)
    max_pending: int = Field(8192, ge=1)
    max_pending_bulk: int = Field(4096, ge=1)
    # while queries wait, one bulk (ingest, back-fill) batch per this many query batches, and
    # while queries are about, bulk batches are cut to this much estimated model time
    bulk_every: int = Field(4, ge=1)
    bulk_batch_ms: float = Field(20.0, gt=0)
    # latency budget of a query (the SLO): refused with 429 when it would be missed; a request
    # may send its own (body budget_ms or header X-Request-Budget-Ms) up to max_query_budget_ms
    query_budget_ms: float = Field(100.0, gt=0)
    max_query_budget_ms: float = Field(60_000.0, gt=0)
    # bound the admitted queries in flight (per model), adapted to their latency against their
    # budget (serving/concurrency.py): what keeps open-loop bursts within the budget
    adaptive_concurrency: bool = True
    max_search_inflight: int = Field(64, ge=1, description="searches running or queued")
    # cluster mode (serve --cluster): a new collection's layout, and how long a query waits on
    # one shard replica before it asks another
    cluster_shards: int = Field(8, ge=1, le=1024, description="virtual shards per collection")
    cluster_replicas: int = Field(2, ge=1, le=16, description="replicas of each shard")
    cluster_replica_timeout_s: float = Field(1.0, gt=0, description="per replica, per query")
    cluster_audit_max_entries: int = Field(
        100_000, ge=100, description="audit entries kept per tenant (a capped Redis stream)"
    )
    # a replicated catalog (--catalog redis+sentinel://...): how long a write waits for a replica
    # to confirm it (else 503), and how long a command waits out a failover of its primary
    cluster_catalog_ack_ms: int = Field(2000, ge=1, description="replica confirmation wait")
    cluster_catalog_failover_s: float = Field(30.0, ge=0, description="failover retry budget")
    # log retention: delete the log records every replica of a shard is past. Redis Streams logs
    # always do; a Kafka broker only with this on (DeleteRecords; tansu's memory engine lacks it)
    cluster_log_trim: bool = False
    # shard transfer (a replica new to a node starts from a snapshot of a live one): the size of
    # each piece of the snapshot sent between nodes, so memory stays bounded for any shard size
    cluster_transfer_piece_bytes: int = Field(8 << 20, ge=4096, description="snapshot piece")
    # federated regions (serve --cluster --queue eu=kafka://...,us=kafka://...): this API node's
    # region (queries default to it; None: every query names its caller's region) and how long
    # it waits on a region's gateway before answering 503 naming the region
    region: str | None = Field(
        None, pattern=r"^[a-z][a-z0-9-]{0,31}$", description="this API node's region, e.g. 'eu'"
    )
    region_timeout_s: float = Field(5.0, gt=0, description="per region, per request")
    # inference as an autoscaled Ray Serve deployment (serve --inference ADDRESS): the Ray
    # address (ray://HOST:PORT for Ray Client, HOST:PORT for the GCS address, or "auto");
    # None: models run in this process. Ray Serve's autoscaler scales each model's replicas
    # between min and max on ongoing requests per replica (running + queued at the handles),
    # optionally on queued texts per replica (0: off), and, where replicas have a GPU, on GPU
    # utilization against the target (without a GPU: queue depth alone)
    inference: str | None = None
    inference_min_replicas: int = Field(1, ge=0)
    inference_max_replicas: int = Field(4, ge=1)
    inference_target_ongoing: float = Field(2.0, gt=0, description="requests per replica")
    inference_target_queued_texts: int = Field(0, ge=0, description="texts per replica; 0: off")
    inference_gpu_target: float = Field(0.7, gt=0, le=1, description="GPU busy share")
    inference_upscale_delay_s: float = Field(5.0, ge=0)
    inference_downscale_delay_s: float = Field(30.0, ge=0)
    inference_look_back_s: float = Field(5.0, gt=0, description="metrics averaged over this")
    inference_metrics_interval_s: float = Field(1.0, gt=0)
    # per replica: requests it runs at once (beyond: queued at the caller's handle); per caller:
    # requests queued in front of full replicas (beyond: 429 at once)
    inference_max_ongoing: int = Field(32, ge=1)
    inference_max_queued: int = Field(512, ge=1)
    inference_drain_s: float = Field(20.0, gt=0, description="a stopping replica finishes")
    inference_replica_cpus: float = Field(1.0, ge=0)
    inference_replica_gpus: float = Field(0.0, ge=0)
    # the bulk lane (ingest, shard nodes' logs) runs in an application of its own per model
    # with these bounds (the rest of the policy as above), so queries never queue behind bulk
    # requests; 0 replicas: bulk shares the query replicas (queries go ahead only inside a
    # replica). Per caller, at most bulk_in_flight bulk requests at once (0: no bound)
    inference_bulk_min_replicas: int = Field(1, ge=0)
    inference_bulk_max_replicas: int = Field(4, ge=0, description="0: bulk shares query replicas")
    inference_bulk_in_flight: int = Field(8, ge=0, description="bulk requests per caller")
    # ingest
    # the job queue: "sqlite" (embedded, DATA_DIR/queue.db), kafka://HOST:PORT[?topic=&group=
    # &partitions=] or redis://HOST:PORT[/DB][?name=]; see ingest/brokers/url.py
    queue: str = Field("sqlite", min_length=1)
    visibility_timeout_s: float = Field(120.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    job_retention_s: float = Field(7 * 24 * 3600.0, gt=0, description="done jobs kept this long")
    ingest_batch_documents: int = Field(64, ge=1, description="documents a worker embeds together")
    # limits
    max_document_chars: int = Field(2_000_000, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_documents_per_request: int = Field(1000, ge=1)
    # POST /v1/collections/{name}/vectors (base64 bulk): vectors per request
    max_vectors_per_request: int = Field(100_000, ge=1)
    # a document's metadata is parsed on every query hit: keep it small and shallow
    max_metadata_bytes: int = Field(64 * 1024, ge=16)
    max_metadata_depth: int = Field(16, ge=1, le=64)
    max_inputs_per_embedding_request: int = Field(2048, ge=1)
    max_k: int = Field(1000, ge=1)
    # index upkeep
    snapshot_interval_s: float = Field(30.0, gt=0)
    # the dashboard's history (obs/history.py): one sample of the metrics every interval, kept
    # for the window (GET /v1/metrics/history, GET /dashboard)
    history_interval_s: float = Field(5.0, gt=0, le=3600)
    history_window_s: float = Field(3600.0, gt=0, le=7 * 24 * 3600)
    sync_interval_s: float = Field(0.2, gt=0)
    compaction_ratio: float = Field(0.2, gt=0, lt=1)
    search_threads: int = Field(2, ge=1)
    # SIGTERM: stop admitting (503), let in-flight jobs finish for up to this long (then give
    # their leases back), snapshot, then let in-flight requests finish for up to this long
    shutdown_timeout_s: float = Field(20.0, gt=0)
    log_level: str = "info"
    # quality signals (registry/quality.py), each off the hot path and each with an off switch:
    # drift of the query distribution per space against a baseline of its first queries
    quality_drift: bool = True
    drift_baseline_queries: int = Field(500, ge=20)
    drift_window_queries: int = Field(500, ge=20)
    drift_psi_alert: float = Field(0.25, gt=0)
    # online recall@10: this share of dense unfiltered queries re-run exactly (0 = off), at most
    # this many per second; an estimate under the index's floor re-tunes its knobs (off: False)
    recall_sample_fraction: float = Field(0.05, ge=0, le=1)
    recall_max_per_s: float = Field(5.0, gt=0)
    recall_time_share: float = Field(
        0.05, gt=0, le=1, description="share of the time exact re-runs may take (1: no pause)"
    )
    recall_min_queries: int = Field(30, ge=5, description="checked queries before acting")
    recall_retune: bool = True
    # click / relevance feedback on query_ids: the last this many queries (feedback.db)
    quality_feedback: bool = True
    feedback_max_queries: int = Field(100_000, ge=100)
    # access control (serving/auth.py). Auth is on unless this is set, which serve allows only
    # on a loopback address
    insecure_no_auth: bool = False
    # Host names the server answers besides localhost/127.0.0.1/[::1] and the bound address
    # (DNS-rebinding defence, also without auth); ["*"] turns the check off
    allowed_hosts: list[str] = Field(default_factory=list)
    # per-key token buckets (a key's own limits win); 0 = unlimited
    rate_limit_rps: float = Field(100.0, ge=0)
    rate_limit_texts_per_s: float = Field(10000.0, ge=0)
    rate_limit_burst_s: float = Field(2.0, gt=0, description="bucket size, in seconds of rate")
    max_filter_conditions: int = Field(256, ge=1, description="fields + operators + $in values")
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def load(cls, toml_path: Path | None = None, **overrides: Any) -> Settings:
        """File values, then environment, then explicit overrides (CLI flags) win. A value that
        cannot be read or is out of range is a ConfigError naming the setting, on one line."""
        values: dict[str, Any] = {}
        if toml_path is not None:
            try:
                values.update(tomllib.loads(toml_path.read_text()))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{toml_path} is not valid TOML: {exc}") from exc
        try:
            env = cls()  # environment + defaults
            merged = {**values, **env.model_dump(exclude_unset=True)}
            merged.update({k: v for k, v in overrides.items() if v is not None})
            return cls(**merged)
        except SettingsError as exc:  # an EMBEDSTACK_* variable that does not parse (JSON)
            field = re.search(r'field "(\w+)"', str(exc))
            what = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "a setting"
            raise ConfigError(f"{what} does not parse: {exc.__cause__ or exc}") from exc
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    """One line for every refused setting: `EMBEDSTACK_PORT (port): Input should be ...`."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        name = str(err["loc"][0]) if err["loc"] else field
        parts.append(f"{ENV_PREFIX}{name.upper()} ({field}): {err['msg']} (got {err['input']!r})")
    return "invalid settings: " + "; ".join(parts)
