"""Settings: EMBEDSTACK_* env variables and an optional TOML file. Read by entry points only."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDSTACK_", extra="forbid")

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
    max_search_inflight: int = Field(64, ge=1, description="searches running or queued")
    # ingest
    visibility_timeout_s: float = Field(120.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    ingest_batch_documents: int = Field(64, ge=1, description="documents a worker embeds together")
    # limits
    max_document_chars: int = Field(2_000_000, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_documents_per_request: int = Field(1000, ge=1)
    max_inputs_per_embedding_request: int = Field(2048, ge=1)
    max_k: int = Field(1000, ge=1)
    # index upkeep
    snapshot_interval_s: float = Field(30.0, gt=0)
    sync_interval_s: float = Field(0.2, gt=0)
    compaction_ratio: float = Field(0.2, gt=0, lt=1)
    search_threads: int = Field(2, ge=1)
    log_level: str = "info"

    @classmethod
    def load(cls, toml_path: Path | None = None, **overrides: Any) -> Settings:
        """File values, then environment, then explicit overrides (CLI flags) win."""
        values: dict[str, Any] = {}
        if toml_path is not None:
            values.update(tomllib.loads(toml_path.read_text()))
        env = cls()  # environment + defaults
        merged = {**values, **env.model_dump(exclude_unset=True)}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**merged)
